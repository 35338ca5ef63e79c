"""`rissole embed`: neighbour embeddings of latents rows for RDM / RARM, and their grid-1 database."""

from __future__ import annotations

import argparse

import numpy as np

from rissole_runtime import argtypes as at
from rissole_runtime.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed rows of a latents file (vq tokens, Inception, joint or CLIP features) for "
                                     "RDM / RARM, optionally building the embedding database; or embed texts (--text)")
    p.add_argument("latents", nargs="?", default=None, help="latents .npy written by `rissole encode` (not with --text)")
    p.add_argument("--embedder", default="vq",
                   help="vq: the latent itself as h*w tokens of c values; inception: reduced-size Inception pool "
                        "features; minilm: all-MiniLM-L6-v2 (text only); joint (or joint:CKPT): the image tower trained "
                        "into MiniLM's space, with MiniLM for text; clip:PATH: a CLIP from a local folder or state dict")
    p.add_argument("--text", nargs="+", default=None, metavar="TEXT",
                   help="embed these captions / prompts instead of latents (minilm, joint, clip:PATH); "
                        "@FILE reads one text per line")
    p.add_argument("--out", required=True, help="embeddings .npy to write (manifest .json, rows and labels beside it)")
    p.add_argument("--rows", default=None, metavar="START:STOP[:STEP],...",
                   help="embed only these latents rows, Python slices joined by commas in order (e.g. 0:30000 for a "
                        "disjoint half; 0:2384:2,0:2384:2,2384:32384 repeats the even rows of a small part twice); "
                        "default all")
    p.add_argument("--label", type=at.non_negative_int, default=None, help="keep only rows of this class label (a one-class database)")
    p.add_argument("--size", type=at.int_range(75), default=75, help="inception: input size (>= 75; 75 costs ~8 ms/image on a thread)")
    p.add_argument("--db", default=None, metavar="DIR", help="also build the grid-1 embedding database DIR from them")
    p.add_argument("--force", action="store_true", help="replace an embeddings file at --out and a database at --db "
                                                        "(nothing else is ever replaced)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (inception)")
    p.set_defaults(func=_embed)


def parse_rows(spec: str | None, n: int) -> np.ndarray:
    """'START:STOP[:STEP][,START:STOP[:STEP]...]' -> int64 ids, each part a Python slice of range(n), joined
    in order (a row may repeat: oversampling a small part); None -> all rows."""
    if spec is None:
        return np.arange(n, dtype=np.int64)
    parts = []
    for part in spec.split(","):
        fields = part.split(":")
        try:
            if len(fields) not in (2, 3):
                raise ValueError(part)
            sl = slice(*(int(f) if f else None for f in fields))
        except ValueError:
            raise ConfigError(f"--rows {spec!r}: expected START:STOP[:STEP] parts joined by commas, e.g. 0:30000 or "
                              f"0:2384:2,2384:32384; {part!r} is not one") from None
        if sl.step == 0:
            raise ConfigError(f"--rows {spec!r}: a STEP of 0 in {part!r}")
        parts.append(np.arange(n, dtype=np.int64)[sl])
    return np.concatenate(parts)


def _embed_text(args: argparse.Namespace) -> int:
    """Texts -> OUT.npy (n, d) float32 unit rows, and OUT.json with the spec and the texts."""
    from pathlib import Path

    from rissole.embeddings import make_embedder
    from rissole.fileio import atomic_path, write_json_atomic

    texts: list[str] = []
    for t in args.text:
        if t.startswith("@"):
            f = Path(t[1:])
            if not f.is_file():
                raise ConfigError(f"--text {t}: file {f} not found (one text per line).")
            texts += [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            texts.append(t)
    if not texts:
        raise ConfigError("--text: no texts given (the files were empty).")
    if args.embedder.partition(":")[0] not in ("minilm", "joint", "clip"):
        raise ConfigError(f"--embedder {args.embedder}: has no text tower; --text needs minilm, joint or clip:PATH.")
    embedder = make_embedder(args.embedder, None, device=args.device)
    v = embedder.embed_texts(texts, progress=True)
    out = Path(args.out)
    with atomic_path(out, suffix=".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, v)
    write_json_atomic(out.with_suffix(".json"), {"embedding": embedder.spec.to_dict(), "count": len(texts), "texts": texts})
    print(f"wrote {out}: {len(texts)} x {embedder.spec.describe()} (texts in {out.with_suffix('.json')})")
    return 0


def _embed(args: argparse.Namespace) -> int:
    import time

    from rissole import distributed
    from rissole.embeddings import build_embedding_database, make_embedder, write_embeddings
    from rissole_runtime.errors import DataError
    from rissole.latents import open_latents

    if args.text is not None:
        if args.latents is not None:
            raise ConfigError("give either a latents file or --text, not both.")
        return _embed_text(args)
    if args.latents is None:
        raise ConfigError("expected a latents .npy (from `rissole encode`) or --text TEXT...")
    w = distributed.init(args.device)  # under torchrun: each rank embeds its share of the rows into the one file
    lat = open_latents(args.latents)
    rows = parse_rows(args.rows, len(lat.array))
    if args.label is not None:
        labels = lat.labels()
        if labels is None:
            raise DataError(f"{args.latents}: no labels beside these latents; --label needs them.")
        rows = rows[np.asarray(labels)[rows] == args.label]
    params = {"size": args.size} if args.embedder == "inception" else {}
    embedder = make_embedder(args.embedder, tuple(lat.array.shape[1:]), device=distributed.rank_device(args.device), **params)
    t0 = time.perf_counter()
    emb = write_embeddings(embedder, args.latents, args.out, rows, force=args.force)
    dt = time.perf_counter() - t0
    if not w.main:
        return 0  # rank 0 reports and builds the database
    print(f"wrote {args.out}: {len(rows)} x {emb.spec.describe()} in {dt:.1f} s ({dt / len(rows) * 1e3:.2f} ms/row)")
    if args.db:
        edb = build_embedding_database(args.out, args.db, overwrite=args.force)
        print(f"wrote {edb.path}: embedding database of {len(edb)} rows; next: "
              f"`rissole db neighbours {edb.path} --keys latent -k 20 [--queries TRAIN_EMB.npy]`")
    return 0
