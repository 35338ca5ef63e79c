"""kNN-Diffusion on the stickers (Sheynin et al.): text-to-image from a model trained on images only, its
no-kNN baseline and k at inference (Fig. 10), out-of-distribution generation by swapping the index
(Fig. 7), and mask-free local manipulation (Sec. 3.1).

    python -m benchmarks.knn_diffusion --knn checkpoints/knn-stickers-joint --noknn runs/knn-k0/final \
        --edit checkpoints/knn-stickers-edit          # -> benchmarks/results/knn_diffusion.{json,md}, PNGs

Text-to-image. Prompts: the captions of the 271 held-out (val) stickers, --per-caption samples each.
  kNN-Diffusion   the text embedding and its k nearest sticker images (text+neighbours), k = 10 = k_train
  k at inference  the same model with k in {1, 5, 10, 20}
  no-kNN          the model trained on the image's own embedding alone (k_train 0), the text alone
FID: the first sample of every caption (N = 271) against the 271 held-out sticker images (Inception on
the CPU; at N = 271 FID is biased upwards, so only the differences between rows mean something; the
VQ-GAN's own reconstructions of the same images give the floor). Text alignment: a sticker-group CNN
(benchmarks.classifier), trained here on VQ-GAN reconstructions of the training stickers of the groups
with at least MIN_VAL held-out stickers (accuracy on the held-out reconstructions reported), labels
every sample of those groups' captions; the figure is the share assigned to the caption's own group.

Index swap: the kNN-Diffusion model with the index replaced by Fashion-MNIST (as RGB, never seen in
training), emoji only or Tux Paint only (rissole.paths.ensure_text_databases' style databases), prompted
with PROMPTS; the 3-way domain CNN of benchmarks.text_to_image labels every sample.

Manipulation, on --edit-n held-out stickers:
  restore   a random box (2..5 latent cells a side) of the sticker replaced by its nearest training
            sticker (the training task, rissole.heads.rdm.edit_pairs), conditioned on the sticker's own
            caption (a text, as `rissole edit` is) or on the box's image embedding (as in training):
            mean pixel change of the edit against its input, inside vs outside the box, and the error
            against the original inside and outside the box before and after
  retarget  the sticker with the caption of a held-out sticker of another group: the group CNN's share
            for the target group before and after the edit, and the mean pixel change
Every cell draws with the same seeds; DPM-Solver++(2M) with --steps calls, guidance --guidance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "knn_diffusion"
RESULTS = ROOT / "benchmarks" / "results"
MIN_VAL = 8  # groups with at least this many held-out stickers are scored for text alignment
K_INFERENCE = (1, 5, 10, 20)
PROMPTS = ("a cat", "a red heart", "a car", "a tree", "a house", "a star", "a fish", "a flower", "a bird",
           "a shoe", "a t-shirt", "a dress", "an apple", "a dog", "the sun", "a guitar")


def sticker_split(split: str) -> tuple[np.ndarray, list[str], list[str]]:
    """uint8 images, captions and groups of a sticker split (runs/stickers32, built on first use)."""
    from rissole.data import load_source
    from rissole.paths import STICKERS, ensure_knn_database

    ensure_knn_database()  # renders the stickers on first use
    src = load_source(f"folder:{STICKERS}:{split}", size=32, channels=3)
    records = src.records or []
    return src.images, [str(r["text"]) for r in records], [str(r.get("group", "")) for r in records]


def cached(name: str, make: Any) -> np.ndarray:
    """WORK/NAME.npy, made by make() when it does not exist."""
    from rissole.fileio import atomic_path

    path = WORK / f"{name}.npy"
    if path.is_file():
        return np.load(path)
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, out)
    return out


def group_classifier(pipe: Any, groups: list[str]) -> tuple[Any, dict[str, Any]]:
    """CNN over `groups` on VQ-GAN reconstructions of the training stickers; accuracy on the held-out ones."""
    from benchmarks.classifier import accuracy, cached_classifier
    from benchmarks.database_swap import vq_reconstruct

    train, _, g_train = sticker_split("train")
    val, _, g_val = sticker_split("val")
    tr = np.array([i for i, g in enumerate(g_train) if g in groups])
    te = np.array([i for i, g in enumerate(g_val) if g in groups])
    x_tr = cached("recon_train", lambda: vq_reconstruct(pipe, train))[tr]
    x_te = cached("recon_val", lambda: vq_reconstruct(pipe, val))[te]
    y_tr = np.array([groups.index(g_train[i]) for i in tr])
    y_te = np.array([groups.index(g_val[i]) for i in te])
    clf, info = cached_classifier(x_tr, y_tr, len(groups), WORK / "classifiers", name="group", epochs=12)
    return clf, {**info, "groups": groups, "heldout_accuracy": accuracy(clf, x_te, y_te),
                 "chance": float(np.bincount(y_te).max() / len(y_te)), "train_images": int(len(tr)),
                 "heldout_images": int(len(te))}


def prompt_samples(pipe: Any, name: str, captions: list[str], per: int, args: argparse.Namespace,
                   strategy: str, k: int | None) -> np.ndarray:
    """(len(captions), per, C, H, W) samples, per samples of every caption (cached)."""
    from rissole.heads.pipeline import SamplingOptions

    opts = SamplingOptions(sampler="dpmpp2m", steps=args.steps, guidance=args.guidance, seed=args.seed, batch=256,
                           prompt=tuple(c for c in captions for _ in range(per)), strategy=strategy, k=k)

    def make() -> np.ndarray:
        return pipe.sample(len(captions) * per, opts)[0]

    return cached(name, make).reshape(len(captions), per, *pipe_image_shape(pipe))


def pipe_image_shape(pipe: Any) -> tuple[int, int, int]:
    dd = pipe.vqgan.config.ddconfig
    return int(dd["in_channels"]), int(dd["resolution"]), int(dd["resolution"])


def text_to_image(args: argparse.Namespace, figures: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.classifier import predict
    from benchmarks.database_swap import vq_reconstruct
    from rissole.heads.registry import load_pipeline
    from rissole.metrics import evaluate
    from rissole.paths import STICKERS

    val, captions, g_val = sticker_split("val")
    counts = {g: g_val.count(g) for g in sorted(set(g_val))}
    groups = [g for g, c in counts.items() if c >= MIN_VAL]
    knn = load_pipeline(args.knn, device="cpu")
    clf, clf_info = group_classifier(knn, groups)
    scored = np.array([g in groups for g in g_val])
    target = np.array([groups.index(g) if g in groups else -1 for g in g_val])
    ref = f"folder:{STICKERS}:val"
    n = len(val)
    floor = evaluate(cached("recon_val", lambda: vq_reconstruct(knn, val)), ref=ref, n=n, progress=False)["fid"]
    rows = [("kNN-Diffusion", knn, "text+neighbours", None, args.knn)]
    rows += [(f"kNN-Diffusion, k = {k}", knn, "text+neighbours", k, args.knn) for k in K_INFERENCE if k != knn.k]
    if args.noknn:
        rows.append(("no-kNN", load_pipeline(args.noknn, device="cpu"), "text", None, args.noknn))
    cells = []
    for label, pipe, strategy, k, ckpt in rows:
        t0 = time.perf_counter()
        tag = f"t2i_{Path(ckpt).parent.name if Path(ckpt).name == 'final' else Path(ckpt).name}_{strategy}_k{k}" \
              f"_g{args.guidance}_s{args.steps}_p{args.per_caption}"
        x = prompt_samples(pipe, tag, captions, args.per_caption, args, strategy, k)
        pred = predict(clf, x[scored].reshape(-1, *x.shape[2:])).reshape(int(scored.sum()), -1)
        share = float((pred == target[scored][:, None]).mean())
        fid = evaluate(np.ascontiguousarray(x[:, 0]), ref=ref, n=n, progress=False)["fid"]
        cell = {"row": label, "checkpoint": str(ckpt), "k_train": pipe.k, "k_inference": k if k is not None else pipe.k,
                "strategy": strategy, "group_share": share, "fid": fid, "fid_n": n,
                "samples": int(x.shape[0] * x.shape[1]), "scored_samples": int(pred.size),
                "seconds": time.perf_counter() - t0}
        print(f"{label:24s} group share {share:.3f}  FID {fid:.1f} (N = {n})", flush=True)
        cells.append(cell)
        if label in ("kNN-Diffusion", "no-kNN"):
            pick = [i for i, g in enumerate(g_val) if g in groups][:: max(1, int(scored.sum()) // 8)][:8]
            figures.setdefault("knn_text", []).extend((f"{label}: {captions[i]}", x[i, : min(4, x.shape[1])]) for i in pick)
    best = min(cells, key=lambda c: c["fid"])
    by = {c["row"]: c for c in cells}
    verdict = None
    if "no-kNN" in by:
        verdict = {"fid_better": by["kNN-Diffusion"]["fid"] < by["no-kNN"]["fid"],
                   "share_better": by["kNN-Diffusion"]["group_share"] > by["no-kNN"]["group_share"]}
    return {"classifier": clf_info, "cells": cells, "prompts": f"{n} held-out sticker captions", "fid_floor_vq": floor,
            "best_fid_row": best["row"], "knn_beats_noknn": verdict}


def index_swap(args: argparse.Namespace, figures: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.classifier import predict
    from benchmarks.text_to_image import domain_classifier
    from rissole.heads.pipeline import SamplingOptions
    from rissole.heads.registry import load_pipeline
    from rissole.latents import open_latents
    from rissole.paths import KNN_DB, STYLES, ensure_text_databases, mix_rows, mix_styles

    paths = ensure_text_databases()
    base = load_pipeline(args.knn, device="cpu")
    clf, clf_info = domain_classifier(base, mix_rows(), mix_styles(), open_latents(paths["latents"]))
    cells = []
    for index, db in (("stickers (training index)", KNN_DB), *((f"{s} only", paths[s]) for s in STYLES)):
        pipe = base if db == KNN_DB else load_pipeline(args.knn, database=db, device="cpu")
        opts = SamplingOptions(sampler="dpmpp2m", steps=args.steps, guidance=args.guidance, seed=args.seed, batch=256,
                               prompt=tuple(p for p in PROMPTS for _ in range(args.per_prompt)))
        name = f"swap_{Path(db).name}_g{args.guidance}_s{args.steps}_p{args.per_prompt}"
        x = cached(name, lambda pipe=pipe, opts=opts: pipe.sample(len(PROMPTS) * args.per_prompt, opts)[0])
        labels = predict(clf, x)
        share = {s: float((labels == i).mean()) for i, s in enumerate(STYLES)}
        cells.append({"index": index, "database": str(db), "rows": len(pipe.edb), "style_share": share})
        print(f"index {index:26s} " + "  ".join(f"{s} {v:.2f}" for s, v in share.items()), flush=True)
        figures.setdefault("knn_swap", []).append((f"index: {index}", x[:: args.per_prompt][:8]))
    return {"classifier": clf_info, "prompts": list(PROMPTS), "per_prompt": args.per_prompt, "cells": cells}


def manipulation(args: argparse.Namespace, figures: dict[str, Any]) -> dict[str, Any]:
    import torch

    from benchmarks.classifier import predict
    from rissole.data import to_model_range
    from rissole.heads.pipeline import SamplingOptions
    from rissole.heads.rdm.edit_pairs import area_images, box_mask, manipulate, random_boxes
    from rissole.heads.registry import load_pipeline
    from rissole.heads.text_conditioning import embed_prompts
    from rissole_runtime.retrieval.search import exact_search

    pipe = load_pipeline(args.edit, device="cpu")
    val, captions, g_val = sticker_split("val")
    groups = [g for g in sorted(set(g_val)) if g_val.count(g) >= MIN_VAL]
    clf, _ = group_classifier(pipe, groups)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice([i for i, g in enumerate(g_val) if g in groups], size=min(args.edit_n, len(val)), replace=False)
    images = val[pick]
    with torch.no_grad():
        lat = pipe.vqgan.encode(to_model_range(images)).float().numpy()
    embedder = pipe.embedder()
    # restore: a box replaced by the nearest training sticker's, as in training
    nn_rows = exact_search(embedder.embed_images(images), pipe.db.vector_chunks(), 1)[0][:, 0]
    boxes = random_boxes(len(pick), lat.shape[-1], torch.Generator().manual_seed(args.seed))
    manip_lat = manipulate(lat, pipe.edb.latents(nn_rows), boxes)
    with torch.no_grad():
        manip = pipe.decode(torch.from_numpy(manip_lat.astype(np.float32)))
    f = images.shape[-1] // lat.shape[-1]  # pixels per latent cell
    m = np.repeat(np.kron(box_mask(boxes, lat.shape[-1]), np.ones((1, 1, f, f), np.float32)), images.shape[1], axis=1) > 0.5
    conditions = {"caption text": embed_prompts(pipe, [captions[i] for i in pick]),
                  "the box's image embedding (as in training)": embedder.embed_images(area_images(images, boxes, f))}
    # retarget: the caption of a held-out sticker of another group
    others = [int(rng.choice([j for j, g in enumerate(g_val) if g in groups and g != g_val[i]])) for i in pick]
    target_text = embed_prompts(pipe, [captions[o] for o in others])
    tgt = np.array([groups.index(g_val[o]) for o in others])
    before = float((predict(clf, images) == tgt).mean())
    err0 = np.abs(manip.astype(np.float64) - images.astype(np.float64))
    with torch.no_grad():
        recon = pipe.decode(torch.from_numpy(lat.astype(np.float32)))
    restore, retarget = [], []
    for guidance in args.edit_guidance:
        opts = SamplingOptions(sampler="dpmpp2m", steps=args.steps, guidance=guidance, seed=args.seed)
        for cond, ctx in conditions.items():
            out = pipe.generate(np.full((len(pick), 1), -1), opts, context=ctx[:, None], source=manip_lat)[0]
            change = np.abs(out.astype(np.float64) - manip.astype(np.float64))
            err = np.abs(out.astype(np.float64) - images.astype(np.float64))
            restore.append({"condition": cond, "guidance": guidance, "n": int(len(pick)),
                            "mean_change_inside": float(change[m].mean()), "mean_change_outside": float(change[~m].mean()),
                            "error_inside_before": float(err0[m].mean()), "error_inside_after": float(err[m].mean()),
                            "error_outside_before": float(err0[~m].mean()), "error_outside_after": float(err[~m].mean())})
            r = restore[-1]
            print(f"restore, {cond}, guidance {guidance}: change inside {r['mean_change_inside']:.1f} vs outside "
                  f"{r['mean_change_outside']:.1f}; error inside {r['error_inside_before']:.1f} -> {r['error_inside_after']:.1f}",
                  flush=True)
            if cond == "caption text" and guidance == args.edit_guidance[0]:
                figures["knn_restore"] = [(f"box replaced; prompt: {captions[i]}", np.stack([images[j], manip[j], out[j]]))
                                          for j, i in enumerate(pick[:8])]
        with torch.no_grad():  # rissole edit: the image's own latent, the target caption's text embedding
            edited = pipe.generate(np.full((len(pick), 1), -1), opts, context=target_text[:, None], source=lat)[0]
        retarget.append({"guidance": guidance, "n": int(len(pick)), "target_share_before": before,
                         "target_share_after": float((predict(clf, edited) == tgt).mean()),
                         "mean_pixel_change_vs_input": float(np.abs(edited.astype(np.float64) - images.astype(np.float64)).mean()),
                         "mean_pixel_change_vs_vq_reconstruction": float(np.abs(edited.astype(np.float64)
                                                                                - recon.astype(np.float64)).mean())})
        print(f"retarget, guidance {guidance}: target-group share {before:.3f} -> {retarget[-1]['target_share_after']:.3f}",
              flush=True)
        if guidance == args.edit_guidance[0]:
            figures["knn_edit"] = [(f"{captions[i]} -> {captions[o]}", np.stack([images[j], edited[j]]))
                                   for j, (i, o) in enumerate(zip(pick[:8], others[:8]))]
    return {"restore": restore, "retarget": retarget, "checkpoint": str(args.edit)}


def save_figures(figures: dict[str, Any]) -> list[str]:
    from benchmarks._plot import labelled_image_rows

    return [str(labelled_image_rows(rows, RESULTS / f"{name}.png", label_width=300).relative_to(ROOT))
            for name, rows in figures.items()]


def table(res: dict[str, Any]) -> str:
    t = res["text_to_image"]
    lines = [f"Held-out sticker captions ({t['prompts']}); group CNN held-out accuracy "
             f"{t['classifier']['heldout_accuracy']:.1%} over {len(t['classifier']['groups'])} groups (chance "
             f"{t['classifier']['chance']:.1%}); FID floor (VQ-GAN reconstructions) {t['fid_floor_vq']:.1f}", "",
             "| row | k_train | k at inference | conditioning | group share | FID (N) |", "|---|---:|---:|---|---:|---:|"]
    for c in t["cells"]:
        lines.append(f"| {c['row']} | {c['k_train']} | {c['k_inference']} | {c['strategy']} | {c['group_share']:.1%} | "
                     f"{c['fid']:.1f} ({c['fid_n']}) |")
    if "index_swap" in res:
        s = res["index_swap"]
        lines += ["", "| index | rows | emoji | tuxpaint | fmnist |", "|---|---:|---:|---:|---:|"]
        for c in s["cells"]:
            sh = c["style_share"]
            lines.append(f"| {c['index']} | {c['rows']:,} | {sh['emoji']:.1%} | {sh['tuxpaint']:.1%} | {sh['fmnist']:.1%} |")
    if "manipulation" in res:
        lines += ["", "| restore: condition | guidance | change inside the box | outside | error inside, before -> after | "
                      "outside, before -> after |", "|---|---:|---:|---:|---|---|"]
        for r in res["manipulation"]["restore"]:
            lines.append(f"| {r['condition']} | {r['guidance']} | {r['mean_change_inside']:.1f} | {r['mean_change_outside']:.1f} | "
                         f"{r['error_inside_before']:.1f} -> {r['error_inside_after']:.1f} | "
                         f"{r['error_outside_before']:.1f} -> {r['error_outside_after']:.1f} |")
        lines += ["", "| retarget: guidance | target-group share before -> after | mean change vs input |", "|---:|---|---:|"]
        for g in res["manipulation"]["retarget"]:
            lines.append(f"| {g['guidance']} | {g['target_share_before']:.1%} -> {g['target_share_after']:.1%} | "
                         f"{g['mean_pixel_change_vs_input']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    from benchmarks._machine import machine_info, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--knn", default=str(ROOT / "checkpoints" / "knn-stickers-joint"), help="kNN-Diffusion checkpoint")
    ap.add_argument("--noknn", default=None, help="its no-kNN baseline (k_train 0), e.g. runs/knn-k0/final")
    ap.add_argument("--edit", default=None, help="the edit model (model.edit), e.g. checkpoints/knn-stickers-edit")
    ap.add_argument("--per-caption", type=int, default=2, help="samples per held-out caption")
    ap.add_argument("--per-prompt", type=int, default=8, help="samples per index-swap prompt")
    ap.add_argument("--edit-n", type=int, default=64, help="held-out stickers to edit")
    ap.add_argument("--edit-guidance", type=float, nargs="+", default=[1.0, 2.0], help="guidance scales of the edits")
    ap.add_argument("--steps", type=int, default=15, help="DPM-Solver++(2M) network calls")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=("t2i", "swap", "edit"),
                    help="parts to leave out (their figures are kept from the --out of the last run)")
    ap.add_argument("--out", default=str(RESULTS / "knn_diffusion.json"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    figures: dict[str, Any] = {}
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    res: dict[str, Any] = {"benchmark": "knn_diffusion", "machine": machine_info(), "args": vars(args),
                           "command": "python -m benchmarks.knn_diffusion " + " ".join(sys.argv[1:])}
    parts = {"t2i": ("text_to_image", lambda: text_to_image(args, figures)),
             "swap": ("index_swap", lambda: index_swap(args, figures)),
             "edit": ("manipulation", lambda: manipulation(args, figures) if args.edit else None)}
    for flag, (key, run) in parts.items():
        if flag not in args.skip:
            res[key] = run()
        elif key in previous:  # a part left out keeps its figures from the last run (--out)
            res[key] = {**previous[key], "from_previous_run": previous.get("machine", {}).get("date_utc")}
    res = {k: v for k, v in res.items() if v is not None}
    res["figures"] = sorted(set(save_figures(figures)) | set(previous.get("figures", [])))
    res["wall_s"] = time.perf_counter() - t0
    write_results(res, args.out, table(res))


if __name__ == "__main__":
    main()
