"""`rissole db build | neighbours | inspect | verify`: the block database and its neighbour tables."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from rissole_runtime import argtypes as at
from rissole_runtime.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="build and inspect the memory-mapped block database and its neighbour tables")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    b = dsub.add_parser("build", help="cut latents (from `rissole encode`) into g x g blocks: DB/blocks.npy + manifest")
    b.add_argument("latents", help="latents .npy written by `rissole encode` (its .json manifest beside it)")
    b.add_argument("--out", required=True, help="database directory to create")
    b.add_argument("--grid", type=at.positive_int, default=2, help="g: the latent is cut into g x g blocks (b = g*g); 2 for 8x8 latents")
    b.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="storage type of the blocks")
    b.add_argument("--force", action="store_true", help="replace a block database already at --out (and its indexes and tables); "
                   "nothing that is not a rissole database is ever replaced")
    b.set_defaults(func=_build)

    n = dsub.add_parser("neighbours", help="build an index and the k-nearest-neighbour tables training and sampling read")
    n.add_argument("db", help="database directory")
    n.add_argument("--backend", default="scann", help="scann (default), faiss-hnsw, faiss-ivfpq or exact")
    n.add_argument("--keys", default="block0", choices=("block0", "latent"), help="retrieval key: block 0 (paper) or whole latent")
    n.add_argument("-k", type=at.positive_int, default=20, help="neighbours per row stored (heads use the first k they need)")
    n.add_argument(
        "--queries", default=None,
        help="latents .npy of a training set other than the database (RDM's disjoint database); "
        "default: the database rows themselves, with each row's own id excluded",
    )
    n.add_argument("--rerank", action="store_true", help="keep only compressed codes in RAM; rescore candidates from the memmap")
    n.add_argument("--param", nargs="*", default=[], metavar="KEY=VALUE", help="backend parameters, e.g. leaves_to_search=20 reorder=200")
    n.add_argument("--batch", type=at.positive_int, default=2048, help="queries per search call")
    n.add_argument("--threads", type=at.positive_int, default=1, help="search threads")
    n.set_defaults(func=_neighbours)

    i = dsub.add_parser("inspect", help="shapes, bytes on disk, tables, and a recall spot-check of each saved index "
                                        "(the manifest's consistency is checked first)")
    i.add_argument("db", help="database directory")
    i.add_argument("--spot-check", type=at.non_negative_int, default=200, metavar="N", help="random rows used as queries (0 to skip)")
    i.add_argument("--recall-at", type=at.positive_int, default=10, metavar="K",
                   help="K of the recall@K spot-check (-k elsewhere is always a number of neighbours)")
    i.set_defaults(func=_inspect)

    v = dsub.add_parser("verify", help="check the manifest's consistency, recompute the full checksum, refuse non-finite "
                                       "blocks, and check every neighbour table")
    v.add_argument("db", help="database directory")
    v.set_defaults(func=_verify)


def parse_params(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings -> dict, values parsed as JSON when they can be (numbers, true/false)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE, e.g. leaves_to_search=20")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _build(args: argparse.Namespace) -> int:
    from rissole.retrieval import build_database

    t0 = time.perf_counter()
    db = build_database(args.latents, args.out, grid=args.grid, dtype=args.dtype, overwrite=args.force)
    print(
        f"wrote {db.path}: {db.rows} rows x {db.num_blocks} blocks of {db.block_shape} ({db.dtype_name()}), "
        f"{db.array.nbytes / 2**20:.1f} MiB, in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _neighbours(args: argparse.Namespace) -> int:
    from rissole import distributed
    from rissole.retrieval import open_database
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import make_tables

    w = distributed.init("cpu")  # under torchrun: each rank searches its share of the query rows
    db = open_database(args.db)
    params = {**parse_params(args.param), "threads": args.threads}
    if args.rerank:
        params["rerank"] = True
    report = make_tables(
        db, KeySet(db, args.keys), args.backend, params, k=args.k, queries_path=args.queries, batch=args.batch,
        sharding=distributed.TableSharding() if w.size > 1 else None,
    )
    if not w.main:
        return 0
    for line in report:
        print(line)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from rissole.retrieval import open_database
    from rissole.retrieval.evaluate import spot_check
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import list_tables, open_table
    from rissole.retrieval.searchers import load_searcher
    from rissole.retrieval.searchers.base import read_searcher_meta

    db = open_database(args.db)
    m = db.manifest
    print(f"database   {db.path}")
    print(f"rows       {db.rows}   grid {db.grid} x {db.grid} = {db.num_blocks} blocks of {m['block_shape']} (d = {db.dim})")
    print(f"latents    {m['latent_shape']} from {m.get('source')}   VQ-GAN {db.checkpoint_hash[:12]}")
    print(f"blocks.npy {m['dtype']} {list(db.array.shape)}  {_mib(m['file_bytes'])}")
    for name in list_tables(db):
        t = open_table(db, name)
        print(f"table      {name}: {t.ids.shape[0]} x k={t.k}, {t.meta['backend']} on {t.meta['key_mode']} keys, "
              f"self excluded: {t.meta['exclude_self']}")
    for idx in sorted((db.path / "indexes").glob("*/")):
        meta = read_searcher_meta(idx)
        size = sum(f.stat().st_size for f in idx.rglob("*") if f.is_file())
        line = f"index      {idx.name}: {meta['backend']} {meta['key_mode']} {_mib(size)}"
        if args.spot_check:
            s = load_searcher(idx, KeySet(db, meta["key_mode"]))
            line += (f"  recall@{args.recall_at} vs exact on {args.spot_check} rows: "
                     f"{spot_check(s, args.spot_check, args.recall_at):.3f}")
        print(line)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from rissole.retrieval import open_database
    from rissole.retrieval.neighbours import list_tables, open_table

    db = open_database(args.db)
    db.verify()
    names = list_tables(db)
    for name in names:
        t = open_table(db, name)
        if not np.isfinite(np.asarray(t.scores)).all():
            print(f"warning: table {name} has non-finite scores (fewer than k rows reachable)")
    print(f"{db.path}: checksum OK ({_mib(db.manifest['file_bytes'])}), {len(names)} neighbour table(s) consistent")
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
