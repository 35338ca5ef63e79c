"""Text-guided RDM in the joint text-image space: class prompts by strategy and k_train (RDM paper, Fig. 8),
post-hoc class conditioning, and zero-shot stylization by database swap vs a style postfix (Rombach et
al., "Text-Guided Synthesis of Artistic Images with RDMs", Fig. 4).

    python -m benchmarks.text_to_image --model k4=checkpoints/rdm-stickers-joint --model k1=runs/rdm-joint-k1/final \
        --model k8=runs/rdm-joint-k8/final                    # -> benchmarks/results/text_to_image.{json,md}, PNGs

Text-to-image: for each Fashion-MNIST class c and each model (k_train), `--n-per-class` samples with
  (i) text              the embedding of "a photo of a c" alone
  (ii) text+neighbours  it and its k - 1 nearest database images
  (iii) neighbours      its k nearest database images
  class                 post-hoc class conditioning: "An image of a c", a pool of 4k, k drawn per sample
where k is the model's k_train. A 10-class Fashion-MNIST CNN (benchmarks.classifier, trained here on
fmnist:train, its test accuracy reported) labels the samples (grey = the mean of R, G, B); the share
assigned to the prompted class is reported over all classes and separately for the three classes
whose captions the joint tower never saw (ankle boot, bag, shirt). FID of each cell's samples against
the first N Fashion-MNIST test images (N = 10 x n-per-class), Inception on the CPU.

Stylization: for every style database (emoji, tuxpaint, fmnist rows of the disjoint database) and each
of PROMPTS, samples conditioned on the prompt's k nearest neighbours in that database (swap) vs the
prompt with the style postfix over the full database (postfix). A 3-way domain CNN, trained here on
VQ-GAN reconstructions of the training rows (so the decoder's look is no cue; held-out accuracy on
the database rows reported), labels every sample; the share assigned to the asked style is the figure.

Every cell draws with the same seeds (batch noise seed = seed * 100_003 + start), DPM-Solver++(2M)
with --steps calls, guidance --guidance. Samples are cached under runs/text_to_image/.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "text_to_image"
RESULTS = ROOT / "benchmarks" / "results"
HELD_OUT = ("ankle boot", "bag", "shirt")  # the joint tower's zero-shot classes (configs/joint/minilm_stickers.yaml)
MODES = ("text", "text+neighbours", "neighbours", "class")
PROMPT_TEMPLATE = "a photo of a {}"
PROMPTS = ("a cat", "a red heart", "a car", "a tree", "a house", "a star", "a fish", "a flower", "a bird",
           "a shoe", "a t-shirt", "a dress", "an apple", "a dog", "the sun", "a guitar")
POSTFIX = {"emoji": "{}, as an emoji", "tuxpaint": "{}, as a Tux Paint clip art stamp",
           "fmnist": "{}, as a grey Fashion-MNIST photo"}


def options(mode: str, text: str, args: argparse.Namespace) -> Any:
    from rissole.heads.pipeline import SamplingOptions

    base = SamplingOptions(sampler="dpmpp2m", steps=args.steps, guidance=args.guidance, seed=args.seed, batch=250)
    if mode == "class":
        return dataclasses.replace(base, class_name=text)
    return dataclasses.replace(base, prompt=(PROMPT_TEMPLATE.format(text) if mode in MODES else text,),
                               strategy=mode if mode in MODES else "neighbours")


def cached_samples(pipe: Any, name: str, n: int, opts: Any) -> np.ndarray:
    """n samples of `opts`, from the cache file WORK/samples/NAME.npy when it exists."""
    from rissole.fileio import atomic_path

    path = WORK / "samples" / f"{name}.npy"
    if path.is_file():
        return np.load(path)
    images, _ = pipe.sample(n, opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, images)
    return images


def grey(images: np.ndarray) -> np.ndarray:
    return images.mean(axis=1, keepdims=True).round().astype(np.uint8) if images.shape[1] == 3 else images


def fmnist_classifier() -> tuple[Any, dict[str, Any]]:
    from benchmarks.classifier import accuracy, cached_classifier
    from rissole.data import load_source

    train, test = load_source("fmnist:train"), load_source("fmnist:test")
    clf, info = cached_classifier(train.images, train.labels, 10, WORK / "classifiers", name="fmnist10", epochs=3)
    return clf, {**info, "test_accuracy": accuracy(clf, test.images, test.labels)}


def domain_classifier(pipe: Any, rows: dict[str, np.ndarray], style: np.ndarray, latents: Any) -> tuple[Any, dict[str, Any]]:
    """3-way CNN emoji / tuxpaint / fmnist on VQ-GAN reconstructions: trained on the training rows (fmnist
    subsampled to 2,000, stickers as they are), scored on the disjoint database rows."""
    import torch

    from benchmarks.classifier import accuracy, cached_classifier
    from rissole.paths import STYLES

    train_rows = np.unique(rows["train"])
    of = [train_rows[style[train_rows] == i] for i in range(len(STYLES))]  # style = rissole.paths.mix_styles()
    # balanced classes: each sticker source repeated up to ~2,000 rows, beside 2,000 Fashion-MNIST rows
    tr = np.concatenate([np.tile(r, max(1, 2000 // max(1, len(r)))) for r in of[:2]] + [of[2][:2000]])
    te = np.concatenate([rows["emoji"], rows["tuxpaint"], rows["fmnist"][:2000]])

    def recon(r: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return pipe.decode(torch.from_numpy(np.asarray(latents.array[r], dtype=np.float32)))

    tr, te = np.sort(tr), np.sort(te)
    x_tr, y_tr = recon(tr), style[tr]
    clf, info = cached_classifier(x_tr, y_tr, 3, WORK / "classifiers", name="style3", epochs=8)
    x_te, y_te = recon(te), style[te]
    per = {st: accuracy(clf, x_te[y_te == i], y_te[y_te == i]) for i, st in enumerate(STYLES)}
    return clf, {**info, "heldout_accuracy": accuracy(clf, x_te, y_te), "heldout_accuracy_per_style": per,
                 "train_counts": {st: int((y_tr == i).sum()) for i, st in enumerate(STYLES)}}


def text_to_image(models: dict[str, Path], args: argparse.Namespace, figures: dict[str, np.ndarray]) -> dict[str, Any]:
    from benchmarks.classifier import predict
    from rissole.data.fashion_mnist import CAPTION_NAMES as CLASSES
    from rissole.heads.registry import load_pipeline
    from rissole.metrics import evaluate

    clf, clf_info = fmnist_classifier()
    cells = []
    for tag, ckpt in models.items():
        pipe = load_pipeline(ckpt, device="cpu")
        for mode in MODES:
            if mode == "text+neighbours" and pipe.k < 2:  # k_train 1: no neighbour beside the text (= "text")
                continue
            name = f"{tag}_{mode}_g{args.guidance}_s{args.steps}_n{args.n_per_class}"
            per_class, images_all, t0 = {}, [], time.perf_counter()
            for c, cname in enumerate(CLASSES):
                images = cached_samples(pipe, f"{name}_{c}", args.n_per_class, options(mode, cname, args))
                per_class[cname] = float((predict(clf, grey(images)) == c).mean())
                images_all.append(images)
                if tag == args.figure_model and c in (0, 1, 7, 8):
                    figures.setdefault(mode, []).append((PROMPT_TEMPLATE.format(cname) if mode != "class" else
                                                         f"--class {cname}", images[:8]))
            seconds = time.perf_counter() - t0
            cell = {"model": tag, "checkpoint": str(ckpt), "k_train": pipe.k, "mode": mode, "per_class": per_class,
                    "share": float(np.mean(list(per_class.values()))),
                    "share_seen": float(np.mean([v for k, v in per_class.items() if k not in HELD_OUT])),
                    "share_heldout": float(np.mean([per_class[k] for k in HELD_OUT])), "seconds": seconds}
            if args.fid and mode in args.fid_modes:
                x = np.concatenate(images_all)
                cell["fid"] = evaluate(x, ref="fmnist:test", n=len(x), progress=False)["fid"]
                cell["fid_n"] = len(x)
            print(f"{tag} {mode:16s} share {cell['share']:.3f} (seen {cell['share_seen']:.3f}, held-out "
                  f"{cell['share_heldout']:.3f})" + (f" FID {cell['fid']:.1f}" if "fid" in cell else ""), flush=True)
            cells.append(cell)
    return {"classifier": clf_info, "cells": cells, "prompt_template": PROMPT_TEMPLATE}


def stylization(ckpt: Path, args: argparse.Namespace, figures: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.classifier import predict
    from rissole.heads.registry import load_pipeline
    from rissole.latents import open_latents
    from rissole.paths import STYLES, ensure_text_databases, mix_rows, mix_styles

    paths = ensure_text_databases(args.vqgan, args.work)
    full = load_pipeline(ckpt, device="cpu")
    clf, info = domain_classifier(full, mix_rows(), mix_styles(), open_latents(paths["latents"]))
    cells = []
    for i, style in enumerate(STYLES):
        swap = load_pipeline(ckpt, database=paths[style], device="cpu")
        for method, pipe, fmt in (("swap", swap, "{}"), ("postfix", full, POSTFIX[style])):
            labels, shown = [], []
            for j, p in enumerate(PROMPTS):
                images = cached_samples(pipe, f"style_{style}_{method}_{j}_g{args.guidance}_s{args.steps}", args.n_per_prompt,
                                        options("style", fmt.format(p), args))
                labels.append(predict(clf, images))
                if j < 4:
                    shown.append((f"{fmt.format(p)}" + (f" [db: {style}]" if method == "swap" else " [db: full]"), images[:8]))
            labels = np.concatenate(labels)
            share = float((labels == i).mean())
            figures.setdefault(f"style_{style}", []).extend(shown)
            cells.append({"style": style, "method": method, "share": share,
                          "assigned": {st: float((labels == m).mean()) for m, st in enumerate(STYLES)},
                          "samples": int(len(labels))})
            print(f"style {style:9s} {method:8s} share {share:.3f}", flush=True)
    wins = {st: next(c["share"] for c in cells if c["style"] == st and c["method"] == "swap") >
           next(c["share"] for c in cells if c["style"] == st and c["method"] == "postfix") for st in STYLES}
    return {"domain_classifier": info, "prompts": list(PROMPTS), "postfix": POSTFIX, "cells": cells, "swap_wins": wins}


def save_figures(figures: dict[str, Any]) -> list[str]:
    from benchmarks._plot import labelled_image_rows

    return [str(labelled_image_rows(rows, RESULTS / f"text_{name.replace('+', '_')}.png").relative_to(ROOT))
            for name, rows in figures.items()]


def table(res: dict[str, Any]) -> str:
    lines = ["| k_train | conditioning | class share (all) | seen classes | held-out classes | FID |",
             "|---:|---|---:|---:|---:|---:|"]
    for c in res["text_to_image"]["cells"]:
        fid = f"{c['fid']:.1f} (N = {c['fid_n']:,})" if "fid" in c else "-"
        lines.append(f"| {c['k_train']} | {c['mode']} | {c['share']:.1%} | {c['share_seen']:.1%} | {c['share_heldout']:.1%} | {fid} |")
    if "stylization" in res:
        lines += ["", "| style database | swap: share of that style | postfix: share of that style | swap wins |",
                  "|---|---:|---:|---|"]
        st = res["stylization"]
        for style in st["swap_wins"]:
            sh = {c["method"]: c["share"] for c in st["cells"] if c["style"] == style}
            lines.append(f"| {style} | {sh['swap']:.1%} | {sh['postfix']:.1%} | {'yes' if st['swap_wins'][style] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    from benchmarks._machine import machine_info, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None, metavar="TAG=CKPT",
                    help="a text-guided RDM checkpoint (repeat for k_train 1, 4, 8); default k4=checkpoints/rdm-stickers-joint")
    ap.add_argument("--n-per-class", type=int, default=100, help="samples per Fashion-MNIST class and cell")
    ap.add_argument("--n-per-prompt", type=int, default=8, help="samples per stylization prompt and cell")
    ap.add_argument("--steps", type=int, default=15, help="DPM-Solver++(2M) network calls")
    ap.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fid", dest="fid", action="store_false", help="skip FID (Inception, ~0.2 s/image on a thread)")
    ap.add_argument("--fid-modes", nargs="*", default=list(MODES), choices=MODES, help="the cells FID is measured for")
    ap.add_argument("--skip-style", action="store_true", help="only the text-to-image cells")
    ap.add_argument("--figure-model", default="k4", help="whose samples the PNG figures show")
    ap.add_argument("--vqgan", default=str(ROOT / "checkpoints" / "vqgan-stickers-fmnist-rgb"),
                    help="the models' RGB VQ-GAN (its latents and style databases are built on first use)")
    ap.add_argument("--work", default=str(ROOT / "runs"), help="where those databases live (rissole.paths.ensure_text_databases)")
    ap.add_argument("--out", default=str(RESULTS / "text_to_image.json"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    models = {t: Path(p) for t, _, p in (m.partition("=") for m in (args.model or ["k4=checkpoints/rdm-stickers-joint"]))}
    t0 = time.perf_counter()
    figures: dict[str, Any] = {}
    res: dict[str, Any] = {"benchmark": "text_to_image", "machine": machine_info(), "args": vars(args),
                           "text_to_image": text_to_image(models, args, figures)}
    if not args.skip_style:
        res["stylization"] = stylization(models.get(args.figure_model, next(iter(models.values()))), args, figures)
    res["figures"] = save_figures(figures)
    res["wall_s"] = time.perf_counter() - t0
    write_results(res, args.out, table(res))


if __name__ == "__main__":
    main()
