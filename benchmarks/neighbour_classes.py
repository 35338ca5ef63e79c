"""How often does a block database's neighbour table find images of the query's own class?

RISSOLE conditions every block of an image on the same-position blocks of the k neighbours its
table lists, so neighbours of another garment class condition the blocks on the wrong shapes. For
each database (rows = the Fashion-MNIST training images in order, as `rissole db build` writes them
from `rissole encode --source fmnist:train`): the share of the first k neighbours in the `train`
table (the one training reads; the row itself excluded) with the query row's label, next to what
random rows would give.

    python -m benchmarks.neighbour_classes --db runs/db/fmnist-train-g2 runs/db/fmnist-train-g2-latent runs/db/fmnist-train-g4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def same_class_share(db_path: str, labels: np.ndarray, k: int) -> dict[str, object]:
    from rissole.retrieval import open_database
    from rissole.retrieval.neighbours import open_table

    db = open_database(db_path)
    if db.rows != len(labels):
        raise SystemExit(f"{db_path}: {db.rows} rows, expected the {len(labels)} Fashion-MNIST training images")
    table = open_table(db, "train")
    ids = np.asarray(table.ids)[:, :k]
    share = float((labels[ids] == labels[:, None]).mean())
    return {"db": db_path, "grid": db.grid, "key_mode": table.meta.get("key_mode"), "k": k, "same_class_share": share}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", nargs="+", required=True, help="block databases built from fmnist:train, with tables")
    ap.add_argument("-k", type=int, default=10, help="neighbours per row (the models' k)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/neighbour_classes.json"), help="results JSON")
    args = ap.parse_args()
    from benchmarks._machine import machine_info
    from rissole.data import load_source
    from rissole_runtime.fileio import write_json_atomic

    labels = np.asarray(load_source("fmnist:train").labels)
    chance = float(((np.bincount(labels) / len(labels)) ** 2).sum())
    runs = [same_class_share(p, labels, args.k) for p in args.db]
    for r in runs:
        print(f"{r['db']}: grid {r['grid']}, {r['key_mode']} keys: {r['same_class_share']:.3f} of {args.k} neighbours "
              f"share the query's class (random rows: {chance:.3f})")
    write_json_atomic(args.out, {"benchmark": "neighbour_classes", "machine": machine_info(), "chance": chance,
                                 "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
