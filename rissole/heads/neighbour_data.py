"""Training data of the RDM paper's heads (RDM and RARM): training latents and their neighbours' embeddings.

The neighbour table says which database rows are the k neighbours of each training row; the
embedding database holds their vectors. Where the training latents come from follows from the table:

    disjoint (default, RDM-OI)  `rissole db neighbours DB --queries EMB_TRAIN.npy`: training row i is
                                row i of that embeddings file, i.e. latents row EMB_TRAIN.rows[i]
    same set (RDM-IN)           the table was made from the database's own rows, each row's own id
                                excluded: training row i is database row i

so a config names only the database and the table, and training rows can never be paired with the
wrong neighbours. Nothing here searches: neighbours come from the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rissole.embeddings.base import EmbeddingSpec
from rissole.embeddings.store import KEY_MODE, EmbeddingDatabase, open_embeddings
from rissole_runtime.errors import DataError
from rissole.latents import Latents, open_latents
from rissole.retrieval.neighbours import NeighbourTable
from rissole.training import chunked_std


def resolve_path(path: str | Path, base: str | Path) -> Path:
    """Config paths are relative to the working directory, else to the repository (shipped configs)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else Path(base) / p


def training_latents(edb: EmbeddingDatabase, table: NeighbourTable) -> tuple[Latents, np.ndarray]:
    """(latents file, rows): training row i is latents row rows[i]; checks the table against the database."""
    name = table.meta.get("name")
    if table.meta.get("key_mode") != KEY_MODE:
        raise DataError(f"{edb.path}: table {name!r} was searched with {table.meta.get('key_mode')} keys; embedding "
                        f"databases are searched by the whole vector. Run `rissole db neighbours {edb.path} --keys {KEY_MODE}`.")
    queries = table.meta.get("queries")
    if queries == "database":
        if not table.meta.get("exclude_self"):
            raise DataError(f"{edb.path}: table {name!r} lists each row among its own neighbours, so the model would learn "
                            f"to copy its input. Re-run `rissole db neighbours {edb.path} --keys {KEY_MODE}` (it excludes the row).")
        return edb.source_latents(), edb.rows
    if not Path(str(queries)).is_file():
        raise DataError(f"{edb.path}: table {name!r} was made for the training embeddings {queries}, which are gone. "
                        "Re-create them with `rissole embed` and re-run `rissole db neighbours --queries`.")
    emb = open_embeddings(queries)
    edb.check_spec(emb.spec, f"the training embeddings {queries}")
    if len(emb.rows) != table.ids.shape[0]:
        raise DataError(f"{queries}: {len(emb.rows)} rows, but table {name!r} of {edb.path} has {table.ids.shape[0]}. "
                        "Re-run `rissole db neighbours --queries`.")
    return open_latents(emb.source_latents), emb.rows


def latents_std(latents: np.ndarray, rows: np.ndarray, chunk: int = 8192) -> float:
    """Standard deviation of every value of the given latents rows: 1 / scale_factor."""
    return chunked_std(latents[np.sort(rows[s : s + chunk])] for s in range(0, len(rows), chunk))


class NeighbourBatcher:
    """Training rows' latents and their first k neighbours' embeddings, by training-row id (with `own`, the
    row's own embedding first: kNN-Diffusion's training condition)."""

    def __init__(self, edb: EmbeddingDatabase, table: NeighbourTable, spec: EmbeddingSpec, k: int, what: str,
                 own: bool = False) -> None:
        edb.check_spec(spec, what)
        if k > table.k:
            raise DataError(f"the model wants k = {k} neighbours, the table {table.meta.get('name')} of {edb.path} has "
                            f"{table.k}. Re-run `rissole db neighbours {edb.path} --keys {KEY_MODE} -k {k}`.")
        self.edb, self.table, self.k, self.own = edb, table, k, own
        lat, self.rows = training_latents(edb, table)
        queries = table.meta.get("queries")
        self.query_file = None if queries == "database" else open_embeddings(queries)
        self.latents_file = lat
        if lat.checkpoint_hash != edb.db.checkpoint_hash:
            raise DataError(f"{lat.path}: latents of VQ-GAN {lat.checkpoint_hash[:12]}, the database {edb.path} stands for "
                            f"latents of {edb.db.checkpoint_hash[:12]}. Embed and train with one VQ-GAN.")

    def __len__(self) -> int:
        return len(self.rows)

    def neighbours(self, ids: np.ndarray) -> torch.Tensor:
        """(B, k, d) float32 embeddings of the first k neighbours of training rows `ids` ((B, 1 + k, d) with
        the rows' own embeddings first, for kNN-Diffusion)."""
        ids = np.asarray(ids)
        nb = self.edb.embeddings(np.asarray(self.table.ids[ids, : self.k]))
        if self.own:
            nb = np.concatenate([self.own_embeddings(ids)[:, None], nb], axis=1)
        return torch.from_numpy(np.ascontiguousarray(nb, dtype=np.float32))

    def own_embeddings(self, ids: np.ndarray) -> np.ndarray:
        """(B, d) the training rows' own vectors: database rows (same set) or the query embeddings file's rows."""
        if self.query_file is None:
            return self.edb.embeddings(ids)
        return np.asarray(self.query_file.latents.array[ids], dtype=np.float32).reshape(len(ids), -1)

    def latents(self, ids: np.ndarray) -> np.ndarray:
        """(B, c, h, w) float32 unscaled latents of training rows `ids`."""
        return np.asarray(self.latents_file.array[self.rows[np.asarray(ids)]], dtype=np.float32)

    def all_latents(self, chunk: int = 8192, progress: bool = False) -> np.ndarray:
        """(N, c, h, w) latents of every training row, in training-row order (for precomputing codes)."""
        out = np.empty((len(self), *self.latents_file.array.shape[1:]), dtype=np.float32)
        for s in tqdm(range(0, len(self), chunk), desc="read latents", disable=not progress):
            out[s : s + chunk] = self.latents(np.arange(s, min(s + chunk, len(self))))
        return out
