"""Database swap of an RDM or RARM head (RDM paper, Sec. 4.3), as measurable on Fashion-MNIST here.

The model is trained once; at inference its embedding database is replaced and nothing else.
Every condition samples N images with the same seed (same noise per image index), top-m and
guidance, so conditions differ only by the database:

  full      the checkpoint's own database (Fashion-MNIST train rows 30000..59999 for the paper RDM)
  class-C   the rows of that database whose label is C (`rissole embed ... --label C`), for --classes
  digits    scikit-learn's bundled 8 x 8 digits (a domain the model never saw), 28 x 28 bilinear +
            2-pixel zero padding to 32 x 32 (benchmarks.digits), encoded with the model's VQ-GAN and
            embedded with its embedder

Two small CNNs (benchmarks.classifier) trained inside the benchmark label the samples:
  - a 10-class Fashion-MNIST classifier (fmnist:train, seeded; test accuracy on fmnist:test and on
    VQ-GAN reconstructions of it): the share of each condition's samples in each class;
  - a domain classifier Fashion-MNIST vs digits, trained on VQ-GAN reconstructions of both (so the
    decoder's look is no cue; held-out accuracy reported): the share of samples labelled "digits".
Classifier weights are cached under <work>/classifiers/ by a hash of their training data and
settings, databases under <work>/db/, samples (.npy) under <work>/samples/ and PNG grids under
<work>/grids/: a rerun skips whatever exists.

    python -m benchmarks.database_swap                                  # runs/paper/rdm/final, N = 2000
    python -m benchmarks.database_swap --ckpt runs/paper/rarm/final --out benchmarks/results/database_swap_rarm.json
    python -m benchmarks.database_swap -n 32 --classes 0 --out /tmp/swap.json     # a quick try

Needs scikit-learn (the digits): `pip install -e .[bench]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "database_swap"
TABLE_K = 20
DOMAINS = ("fashion-mnist", "digits")


def vq_reconstruct(pipe: Any, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 images -> the model's VQ-GAN -> uint8 (what a perfect generator of those images would output)."""
    import torch

    from rissole.data import to_model_range

    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            out.append(pipe.decode(pipe.vqgan.encode(to_model_range(images[s : s + batch]).to(pipe.device))))
    return np.concatenate(out)


def ensure_embedding_db(pipe: Any, latents_path: Path, rows: np.ndarray | None, emb_path: Path, db_path: Path) -> Path:
    """An embedding database of `rows` of a latents file (all rows when None), embedded as the model's database
    was, with exact `train` and `database` neighbour tables (k = 20; each row's own id excluded from `train`).
    Rebuilt only if missing or holding other rows."""
    from rissole.embeddings import build_embedding_database, embedder_for_spec, open_embedding_database
    from rissole.embeddings.store import KEY_MODE
    from rissole_runtime.errors import DataError
    from rissole.latents import open_latents
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import list_tables, make_tables

    lat = open_latents(latents_path)
    want = np.arange(len(lat.array), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    try:
        edb = open_embedding_database(db_path)
        if (np.array_equal(edb.rows, want) and edb.spec == pipe.edb.spec and "database" in list_tables(edb.db)
                and Path(edb.info["latents"]).resolve() == latents_path.resolve()):
            return db_path
    except DataError:
        pass
    emb_path.parent.mkdir(parents=True, exist_ok=True)
    embedder = embedder_for_spec(pipe.edb.spec, tuple(lat.array.shape[1:]), vqgan=pipe.vqgan, device=str(pipe.device))
    write_embeddings_quiet(embedder, latents_path, emb_path, want)
    edb = build_embedding_database(emb_path, db_path, overwrite=True, progress=False)
    for line in make_tables(edb.db, KeySet(edb.db, KEY_MODE), "exact", {}, k=min(TABLE_K, len(want) - 1), progress=False):
        print(f"  {line}", flush=True)
    return db_path


def write_embeddings_quiet(embedder: Any, latents_path: Path, out: Path, rows: np.ndarray) -> None:
    from rissole.embeddings import write_embeddings

    t0 = time.perf_counter()
    write_embeddings(embedder, latents_path, out, rows, progress=False, force=True)  # the benchmark's own cache
    print(f"  embedded {len(rows)} rows of {latents_path} -> {out} in {time.perf_counter() - t0:.1f} s", flush=True)


def ensure_digits_latents(pipe: Any, work: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """digits32.npy (uint8 (1797, 1, 32, 32)) and its latents under the model's VQ-GAN (encoded once)."""
    from rissole.checkpoint import load_checkpoint
    from benchmarks.digits import load_digits_32
    from rissole_runtime.fileio import atomic_path
    from rissole.heads.neighbour_data import resolve_path
    from rissole.latents import encode_images, open_latents
    from rissole.paths import REPO_ROOT, SHIPPED_VQGAN

    images, labels = load_digits_32()
    d = work / "digits"
    d.mkdir(parents=True, exist_ok=True)
    npy = d / "digits32.npy"
    if not npy.is_file() or not np.array_equal(np.load(npy), images):
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, images)
    vq_hash = pipe.config["vqgan_hash"]
    lat_path = d / f"digits32-vq{vq_hash[:12]}.npy"
    try:
        if open_latents(lat_path).checkpoint_hash == vq_hash:
            return lat_path, images, labels
    except Exception:  # missing or partial: encode again
        pass
    vq_path = resolve_path(pipe.config["data"].get("vqgan") or str(SHIPPED_VQGAN), REPO_ROOT)
    if load_checkpoint(vq_path).weights_hash() != vq_hash:
        raise SystemExit(f"{vq_path}: not the VQ-GAN the model was trained with ({vq_hash[:12]})")
    encode_images(pipe.vqgan, images, lat_path, checkpoint=str(vq_path), checkpoint_hash=vq_hash,
                  source=f"npy:{npy.resolve()}", labels=labels, device=pipe.device, progress=False, force=True)
    return lat_path, images, labels


def fmnist_classifier(work: Path, pipe: Any, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from rissole.data import load_source
    from benchmarks.classifier import accuracy, cached_classifier

    train = load_source("fmnist:train", limit=args.clf_limit)
    test = load_source("fmnist:test")
    clf, info = cached_classifier(train.images, train.labels, 10, work / "classifiers", name="fmnist10",
                                  epochs=args.clf_epochs, seed=args.seed)
    info["test_accuracy"] = accuracy(clf, test.images, test.labels)
    rec = vq_reconstruct(pipe, test.images[: args.recon_n])
    info["test_accuracy_vq_reconstructions"] = accuracy(clf, rec, test.labels[: args.recon_n])
    info["vq_reconstructions_n"] = int(len(rec))
    return clf, info


def domain_classifier(work: Path, pipe: Any, digits_lat: Path, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Fashion-MNIST (0) vs digits (1) on VQ-GAN decodings of stored latents of both, balanced, 80/20 split."""
    import torch

    from rissole.latents import open_latents
    from benchmarks.classifier import accuracy, cached_classifier

    rng = np.random.default_rng(args.seed)
    dig = open_latents(digits_lat).array
    nd = len(dig)
    perm_d = rng.permutation(nd)
    fm_rows = np.sort(rng.choice(pipe.edb.rows, size=nd, replace=False))  # from the model's own database
    fm = np.asarray(pipe.edb.source_latents().array[fm_rows])
    perm_f = rng.permutation(nd)
    n_train = int(round(0.8 * nd))
    dec = lambda lat: pipe.decode(torch.from_numpy(np.array(lat, dtype=np.float32)))  # noqa: E731
    img_d, img_f = dec(dig[:]), dec(fm)
    x_tr = np.concatenate([img_f[perm_f[:n_train]], img_d[perm_d[:n_train]]])
    y_tr = np.concatenate([np.zeros(n_train, np.int64), np.ones(n_train, np.int64)])
    x_te = np.concatenate([img_f[perm_f[n_train:]], img_d[perm_d[n_train:]]])
    y_te = np.concatenate([np.zeros(nd - n_train, np.int64), np.ones(nd - n_train, np.int64)])
    clf, info = cached_classifier(x_tr, y_tr, 2, work / "classifiers", name="domain", epochs=args.domain_epochs,
                                  seed=args.seed)
    info["test_accuracy"] = accuracy(clf, x_te, y_te)
    info["test_images"] = int(len(y_te))
    info["data"] = ("VQ-GAN decodings of stored latents: Fashion-MNIST = random rows of the model's database, "
                    "digits = all 1797 sklearn digits; balanced, seeded 80/20 split")
    return clf, info


def sample_condition(pipe: Any, name: str, args: argparse.Namespace, work: Path, tag: str) -> tuple[np.ndarray, float | None]:
    from rissole_runtime.fileio import atomic_path
    from rissole_runtime.images import save_grid

    stem = f"{name}_n{args.n}_seed{args.seed}_m{args.top_m:g}_s{args.guidance:g}_{args.sampler_name}"
    npy = work / "samples" / tag / f"{stem}.npy"
    if npy.is_file():
        return np.load(npy), None
    from rissole.heads.pipeline import SamplingOptions

    steps = {"steps": args.steps} if "steps" in pipe.accepts else {}
    images, seconds = pipe.sample(args.n, SamplingOptions(top_m=args.top_m, seed=args.seed, guidance=args.guidance,
                                                          batch=args.batch, **steps))
    npy.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, images)
    save_grid(images[:64], work / "grids" / tag / f"{stem}.png", nrow=8)
    return images, seconds


def shares(labels: np.ndarray, num: int) -> list[float]:
    return (np.bincount(labels, minlength=num) / max(len(labels), 1)).tolist()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(ROOT / "runs/paper/rdm/final"), help="RDM or RARM checkpoint")
    ap.add_argument("-n", type=int, default=2000, help="samples per condition")
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 1, 7],
                    help="one-class databases to try (0 t-shirt, 1 trouser, 7 sneaker; N samples each)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (all conditions) and classifier seed")
    ap.add_argument("--top-m", type=float, default=1.0, help="top-m fraction of p_D for pseudo-queries")
    ap.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (RDM)")
    ap.add_argument("--batch", type=int, default=250, help="images per generate call")
    ap.add_argument("--clf-epochs", type=int, default=3, help="Fashion-MNIST classifier epochs")
    ap.add_argument("--clf-limit", type=int, default=None, help="train it on the first N fmnist:train images only")
    ap.add_argument("--domain-epochs", type=int, default=8, help="domain classifier epochs")
    ap.add_argument("--recon-n", type=int, default=2000, help="test images whose VQ-GAN reconstructions are classified")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--work", default=str(WORK), help="databases, classifiers, samples and grids")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/database_swap.json"), help="results JSON")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise SystemExit("database_swap needs scikit-learn for its digits data set: `pip install -e .[bench]`")
    from benchmarks._machine import machine_info
    from rissole.checkpoint import load_checkpoint
    from benchmarks.digits import PREPROCESSING
    from rissole.data.fashion_mnist import CLASS_NAMES
    from rissole_runtime.fileio import write_json_atomic
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline
    from benchmarks.classifier import predict

    if not (Path(args.ckpt) / "config.yaml").is_file():
        raise SystemExit(f"{args.ckpt}: no checkpoint there (train it first, e.g. "
                         "`python -m benchmarks.paper_table train --rows rdm rarm`)")
    work = Path(args.work)
    t_start = time.perf_counter()
    pipe = NeighbourHeadPipeline.load(args.ckpt, device="cpu")
    args.sampler_name = f"ddim{args.steps}" if "steps" in pipe.accepts else "tokens"
    tag = f"{pipe.kind}-{load_checkpoint(args.ckpt).weights_hash()[:12]}"
    full_db = pipe.edb.path
    src = pipe.edb.source_latents()
    labels = src.labels()
    if labels is None:
        raise SystemExit(f"{src.path}: no labels beside the database's source latents; one-class databases need them")
    print(f"{pipe.kind} {args.ckpt}: database {full_db} ({len(pipe.edb)} rows of {src.path})", flush=True)

    # databases
    t0 = time.perf_counter()
    db_base = f"{full_db.name}-{pipe.edb.db.manifest['sha256'][:8]}"
    dbs: dict[str, dict[str, Any]] = {"full": {"path": str(full_db), "rows": len(pipe.edb)}}
    for c in args.classes:
        rows = pipe.edb.rows[np.asarray(labels)[pipe.edb.rows] == c]
        p = ensure_embedding_db(pipe, src.path, rows, work / "emb" / f"{db_base}-class{c}.npy",
                                work / "db" / f"{db_base}-class{c}")
        dbs[f"class-{c}"] = {"path": str(p), "rows": int(len(rows)), "class": c, "class_name": CLASS_NAMES[c]}
    digits_lat, digits_images, _ = ensure_digits_latents(pipe, work)
    p = ensure_embedding_db(pipe, digits_lat, None, work / "emb" / f"digits32-{pipe.edb.spec.embedder}.npy",
                            work / "db" / f"digits32-{pipe.edb.spec.embedder}-vq{pipe.config['vqgan_hash'][:12]}")
    dbs["digits"] = {"path": str(p), "rows": int(len(digits_images))}
    db_seconds = time.perf_counter() - t0
    print(f"databases ready in {db_seconds:.0f} s", flush=True)

    # classifiers
    t0 = time.perf_counter()
    fm_clf, fm_info = fmnist_classifier(work, pipe, args)
    print(f"fmnist classifier: test accuracy {fm_info['test_accuracy']:.4f} (on VQ reconstructions "
          f"{fm_info['test_accuracy_vq_reconstructions']:.4f}), cached: {fm_info['from_cache']}", flush=True)
    dom_clf, dom_info = domain_classifier(work, pipe, digits_lat, args)
    print(f"domain classifier: held-out accuracy {dom_info['test_accuracy']:.4f}, cached: {dom_info['from_cache']}",
          flush=True)
    clf_seconds = time.perf_counter() - t0

    # conditions
    conditions: dict[str, dict[str, Any]] = {}
    for name, info in dbs.items():
        p_c = pipe if name == "full" else NeighbourHeadPipeline.load(args.ckpt, database=info["path"], device="cpu")
        t0 = time.perf_counter()
        images, gen_s = sample_condition(p_c, name, args, work, tag)
        cls = predict(fm_clf, images)
        dom = predict(dom_clf, images)
        res: dict[str, Any] = {"database": info, "n": int(len(images)),
                               "generate_seconds": gen_s, "s_per_image": gen_s / len(images) if gen_s else None,
                               "fmnist_class_shares": dict(zip(CLASS_NAMES, shares(cls, 10))),
                               "share_digits": float(dom.mean())}
        if "class" in info:
            res["share_in_class"] = float((cls == info["class"]).mean())
        conditions[name] = res
        msg = f"{name}: share labelled digits {res['share_digits']:.3f}"
        if "class" in info:
            msg += f", share in class {info['class']} ({info['class_name']}) {res['share_in_class']:.3f}"
        print(msg + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    full_shares = conditions["full"]["fmnist_class_shares"]
    summary = [{"class": c, "class_name": CLASS_NAMES[c], "share_full_db": full_shares[CLASS_NAMES[c]],
                "share_one_class_db": conditions[f"class-{c}"]["share_in_class"]} for c in args.classes]
    domain = {"share_digits_fmnist_db": conditions["full"]["share_digits"],
              "share_digits_digits_db": conditions["digits"]["share_digits"]}
    lines = ["| database | samples labelled class C | labelled digits |", "|---|---:|---:|"]
    for s in summary:
        lines.append(f"| full (class {s['class']} {s['class_name']}) | {s['share_full_db']:.3f} | |")
        lines.append(f"| class {s['class']} only ({dbs[f'class-' + str(s['class'])]['rows']} rows) | "
                     f"{s['share_one_class_db']:.3f} | {conditions['class-' + str(s['class'])]['share_digits']:.3f} |")
    lines.append(f"| full Fashion-MNIST | | {domain['share_digits_fmnist_db']:.3f} |")
    lines.append(f"| sklearn digits ({dbs['digits']['rows']} rows) | | {domain['share_digits_digits_db']:.3f} |")
    table = "\n".join(lines)
    result = {"benchmark": "database_swap", "machine": machine_info(), "checkpoint": args.ckpt, "kind": pipe.kind,
              "n": args.n, "seed": args.seed, "top_m": args.top_m, "guidance": args.guidance,
              "sampler": args.sampler_name, "classifiers": {"fmnist": fm_info, "domain": dom_info},
              "databases": dbs, "digits_preprocessing": PREPROCESSING,
              "one_class": summary, "domain_swap": domain, "conditions": conditions,
              "grids_dir": os.path.relpath(work / "grids" / tag, ROOT) if work.is_relative_to(ROOT) else str(work / "grids" / tag),
              "seconds": {"databases": db_seconds, "classifiers": clf_seconds, "total": time.perf_counter() - t_start},
              "table": table}
    write_json_atomic(args.out, result)
    print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
