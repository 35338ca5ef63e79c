"""`rissole embed`: neighbour embeddings of latents rows for RDM / RARM, and their grid-1 database."""

from __future__ import annotations

import argparse

import numpy as np

from rissole_runtime.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed rows of a latents file (vq tokens or Inception features) for RDM / RARM; "
                                     "optionally build the embedding database")
    p.add_argument("latents", help="latents .npy written by `rissole encode`")
    p.add_argument("--embedder", choices=("vq", "inception"), default="vq",
                   help="vq: the latent itself as h*w tokens of c values; inception: reduced-size Inception pool features")
    p.add_argument("--out", required=True, help="embeddings .npy to write (manifest .json, rows and labels beside it)")
    p.add_argument("--rows", default=None, metavar="START:STOP",
                   help="embed only latents rows START..STOP-1 (e.g. 0:30000 for a disjoint half); default all")
    p.add_argument("--label", type=int, default=None, help="keep only rows of this class label (a one-class database)")
    p.add_argument("--size", type=int, default=75, help="inception: input size (>= 75; 75 costs ~8 ms/image on a thread)")
    p.add_argument("--db", default=None, metavar="DIR", help="also build the grid-1 embedding database DIR from them")
    p.add_argument("--force", action="store_true", help="replace an existing database at --db")
    p.add_argument("--device", default="cpu", help="cpu or cuda (inception)")
    p.set_defaults(func=_embed)


def parse_rows(spec: str | None, n: int) -> np.ndarray:
    """'START:STOP' -> int64 ids (Python slice semantics on range(n)); None -> all rows."""
    if spec is None:
        return np.arange(n, dtype=np.int64)
    start, sep, stop = spec.partition(":")
    try:
        sl = slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError as exc:
        raise ConfigError(f"--rows {spec!r}: expected START:STOP, e.g. 0:30000") from exc
    if not sep:
        raise ConfigError(f"--rows {spec!r}: expected START:STOP, e.g. 0:30000")
    return np.arange(n, dtype=np.int64)[sl]


def _embed(args: argparse.Namespace) -> int:
    import time

    from rissole.embeddings import build_embedding_database, make_embedder, write_embeddings
    from rissole_runtime.errors import DataError
    from rissole.latents import open_latents

    lat = open_latents(args.latents)
    rows = parse_rows(args.rows, len(lat.array))
    if args.label is not None:
        labels = lat.labels()
        if labels is None:
            raise DataError(f"{args.latents}: no labels beside these latents; --label needs them.")
        rows = rows[np.asarray(labels)[rows] == args.label]
    params = {"size": args.size} if args.embedder == "inception" else {}
    embedder = make_embedder(args.embedder, tuple(lat.array.shape[1:]), device=args.device, **params)
    t0 = time.perf_counter()
    emb = write_embeddings(embedder, args.latents, args.out, rows)
    dt = time.perf_counter() - t0
    print(f"wrote {args.out}: {len(rows)} x {emb.spec.describe()} in {dt:.1f} s ({dt / len(rows) * 1e3:.2f} ms/row)")
    if args.db:
        edb = build_embedding_database(args.out, args.db, overwrite=args.force)
        print(f"wrote {edb.path}: embedding database of {len(edb)} rows; next: "
              f"`rissole db neighbours {edb.path} --keys latent -k 20 [--queries TRAIN_EMB.npy]`")
    return 0
