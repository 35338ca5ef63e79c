"""Embedding files and embedding databases: the block-database format with grid 1 and one block.

    EMB.npy            float32 (n, d, 1, 1) in the `rissole encode` latents format, so the retrieval
                       core reads it unchanged (`rissole db build --grid 1`, `db neighbours --queries`)
    EMB.json           the latents manifest plus "embedding" (EmbeddingSpec), "latents" (the source
                       latents file) and "rows" (EMB.rows.npy: which latents row each vector embeds)
    DB/                a block database built from EMB.npy (grid 1: blocks.npy is (1, N, d)), plus
    DB/embedding.json  the spec and provenance, and DB/rows.npy (the source rows of DB's rows)

Search keys of a grid-1 database in key mode `latent` are exactly the stored unit vectors, so the
searchers, neighbour tables and p_D of the retrieval core serve embedding databases as they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from rissole import distributed
from rissole.embeddings.base import Embedder, EmbeddingSpec
from rissole_runtime.errors import DataError
from rissole_runtime.fileio import LATENTS, atomic_path, check_replace, check_sidecars, create_memmap, output_lock, write_json_atomic
from rissole.latents import FORMAT as LATENTS_FORMAT, FORMAT_VERSION as LATENTS_VERSION, Latents, open_latents
from rissole.retrieval.database import BlockDatabase, build_database, open_database
from rissole_runtime.validate import check_finite, contained_path

EMBEDDING_FILE = "embedding.json"
ROWS_FILE = "rows.npy"
KEY_MODE = "latent"  # with grid 1, the whole (single-block) row: the embedding itself


@dataclass
class EmbeddingFile:
    """An embeddings .npy (n, d, 1, 1) with its spec and the latents rows it was made from."""

    latents: Latents  # the file itself, opened as a latents file
    spec: EmbeddingSpec
    source_latents: Path
    rows: np.ndarray  # (n,) int64 rows of source_latents

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.asarray(self.latents.array[start:stop], dtype=np.float32).reshape(-1, self.spec.dim)


def write_embeddings(embedder: Embedder, latents_path: str | os.PathLike, out: str | os.PathLike,
                     rows: np.ndarray | None = None, chunk: int = 512, progress: bool = True,
                     force: bool = False) -> EmbeddingFile:
    """Embed rows of a latents file (all by default) into `out` atomically (replacing only an embeddings or
    latents file there, and only with `force`).

    Embedders that are a function of the latent (vq) read the latents; the others (inception)
    embed the original images, loaded from the source spec recorded in the latents manifest."""
    latents_path = Path(latents_path).resolve()
    lat = open_latents(latents_path)
    rows = np.arange(len(lat.array), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or not len(rows) or rows.min() < 0 or rows.max() >= len(lat.array):
        raise DataError(f"{latents_path}: rows must be a non-empty list of ids in [0, {len(lat.array)}), found "
                        f"{len(rows)} ids in [{rows.min() if len(rows) else '-'}, {rows.max() if len(rows) else '-'}].")
    spec = embedder.spec
    out = Path(out)
    images = None
    sidecars = [out.with_suffix(".json"), out.with_name(out.stem + ".rows.npy"), out.with_name(out.stem + ".labels.npy")]
    if embedder.embed_latents(np.asarray(lat.array[:1])) is None:
        images = _source_images(lat)
    share = distributed.shard_rows(len(rows), chunk)  # under torchrun each rank embeds its own rows of the one file

    @contextlib.contextmanager
    def create() -> Iterator[tuple[np.memmap, Path]]:
        with output_lock(out):
            check_replace(out, LATENTS, force)
            check_sidecars(out, LATENTS, sidecars)
            with atomic_path(out, suffix=".npy") as tmp:
                yield create_memmap(tmp, np.float32, (len(rows), spec.dim, 1, 1), "the embeddings", out), tmp
            _write_sidecars(embedder, lat, latents_path, out, rows)

    with distributed.sharded_output(create()) as arr:
        for s in tqdm(range(share.start, share.stop, chunk), desc=f"embed {spec.embedder}", unit="chunk",
                      disable=not (progress and distributed.world().main)):
            ids = rows[s : min(s + chunk, share.stop)]
            v = embedder.embed_latents(np.asarray(lat.array[ids])) if images is None else embedder.embed_images(images[ids])
            check_finite(v, f"{spec.embedder} embeddings of {latents_path} rows {ids[0]}..{ids[-1]}")
            arr[s : s + len(ids)] = v.reshape(len(ids), spec.dim, 1, 1)
    return open_embeddings(out)


def _write_sidecars(embedder: Embedder, lat: Latents, latents_path: Path, out: Path, rows: np.ndarray) -> EmbeddingFile:
    spec = embedder.spec
    with atomic_path(out.with_name(out.stem + ".rows.npy")) as tmp, open(tmp, "wb") as f:
        np.save(f, rows)
    labels, labels_name = lat.labels(), None
    if labels is not None:
        labels_name = out.stem + ".labels.npy"
        with atomic_path(out.with_name(labels_name)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(labels)[rows])
    manifest = {
        "format": LATENTS_FORMAT,
        "format_version": LATENTS_VERSION,
        "shape": [len(rows), spec.dim, 1, 1],
        "dtype": "float32",
        "count": len(rows),
        "checkpoint": lat.manifest.get("checkpoint"),
        "checkpoint_hash": lat.checkpoint_hash,  # the VQ-GAN of the latents these vectors stand for
        "source": lat.manifest.get("source"),
        "labels": labels_name,
        "embedding": spec.to_dict(),
        "latents": str(latents_path),
        "rows": out.stem + ".rows.npy",
    }
    write_json_atomic(out.with_suffix(".json"), manifest)
    return open_embeddings(out)


def _source_images(lat: Latents) -> np.ndarray:
    from rissole.data import load_source, source_channels

    spec = lat.manifest.get("source")
    if not spec:
        raise DataError(f"{lat.path}: the latents manifest names no image source; this embedder needs the images.")
    n = len(lat.array)
    # colour sources load as colour (an RGB VQ-GAN's latents); `rissole encode --limit N` encodes the first N
    images = load_source(spec, limit=n, channels=source_channels(spec)).images
    if len(images) != n:
        raise DataError(f"{lat.path}: its source {spec!r} holds {len(images)} images, the latents {n} rows; "
                        "re-encode the source with `rissole encode` so rows line up.")
    return images


def open_embeddings(path: str | os.PathLike) -> EmbeddingFile:
    """Open an embeddings file written by `write_embeddings` (refusing a plain latents file)."""
    path = Path(path)
    lat = open_latents(path)
    if "embedding" not in lat.manifest:
        raise DataError(f"{path}: a latents file, not an embeddings file (no 'embedding' in its manifest). "
                        "Make one with `rissole embed`.")
    rows = _rows(contained_path(path.parent, str(lat.manifest.get("rows")), f"{path.with_suffix('.json')} (rows)"),
                 len(lat.array))
    return EmbeddingFile(lat, EmbeddingSpec.from_dict(lat.manifest["embedding"]), Path(lat.manifest["latents"]), rows)


@dataclass
class EmbeddingDatabase:
    """A grid-1 block database whose rows are neighbour embeddings, with their spec and source rows."""

    db: BlockDatabase
    spec: EmbeddingSpec
    info: dict[str, Any]
    rows: np.ndarray  # (N,) row of the source latents file that database row i embeds

    @property
    def path(self) -> Path:
        return self.db.path

    def __len__(self) -> int:
        return self.db.rows

    def embeddings(self, ids: np.ndarray) -> np.ndarray:
        """float32 ids.shape + (d,): the stored unit vectors of database rows, read from the memmap."""
        return self.db.vectors(ids)

    def source_latents(self) -> Latents:
        return _open_source(self.info["latents"], self.path)

    def latents(self, ids: np.ndarray) -> np.ndarray:
        """float32 (n, c, h, w): the VQ latents of database rows (to show a retrieved neighbour as an image)."""
        ids = np.asarray(ids, dtype=np.int64)
        return np.asarray(self.source_latents().array[self.rows[ids]], dtype=np.float32)

    def check_spec(self, expected: EmbeddingSpec, what: str) -> None:
        """Refuse a database whose vectors are not the embedding `what` was trained on."""
        if self.spec.identity() != expected.identity():
            raise DataError(
                f"{self.path}: a database of {self.spec.describe()}, but {what} conditions on "
                f"{expected.describe()}. Fix: build a database of that embedding "
                f"with `rissole embed LATENTS --embedder {expected.embedder} --out EMB.npy --db DIR`."
            )


def _open_source(path: str, where: Path) -> Latents:
    if not Path(path).is_file():
        raise DataError(f"{where}: its source latents {path} are gone. Re-create them with `rissole encode`, "
                        "or rebuild this database with `rissole embed`.")
    return open_latents(path)


def build_embedding_database(emb_path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False,
                             progress: bool = True) -> EmbeddingDatabase:
    """A grid-1 block database of an embeddings file, with its spec and source rows beside the manifest."""
    emb = open_embeddings(emb_path)
    db = build_database(emb_path, out, grid=1, overwrite=overwrite, progress=progress)
    shutil.copyfile(Path(emb_path).with_name(emb.latents.manifest["rows"]), db.path / ROWS_FILE)
    write_json_atomic(db.path / EMBEDDING_FILE, {**emb.spec.to_dict(), "latents": str(emb.source_latents),
                                                 "embeddings": str(Path(emb_path).resolve()), "rows": ROWS_FILE,
                                                 "db_sha256": db.manifest["sha256"]})
    return open_embedding_database(db.path)


def open_embedding_database(path: str | os.PathLike) -> EmbeddingDatabase:
    """Open a database made by `build_embedding_database`; a block database of latents is refused."""
    db = open_database(path)
    f = db.path / EMBEDDING_FILE
    if not f.is_file():
        raise DataError(f"{db.path}: a block database of latents (grid {db.grid}), not of neighbour embeddings "
                        f"(no {EMBEDDING_FILE}). Fix: `rissole embed LATENTS --embedder vq --out EMB.npy --db DIR`.")
    try:
        info = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{f}: corrupt ({exc}). Rebuild with `rissole embed --db`.") from exc
    if not isinstance(info, dict):
        raise DataError(f"{f}: expected a mapping, found {type(info).__name__}. Rebuild with `rissole embed --db`.")
    if info.get("db_sha256") != db.manifest["sha256"]:
        raise DataError(f"{f}: written for another blocks.npy ({str(info.get('db_sha256'))[:12]}); rebuild with `rissole embed --db`.")
    spec = EmbeddingSpec.from_dict(info)
    if db.grid != 1 or db.dim != spec.dim:
        raise DataError(f"{db.path}: expected grid 1 and d = {spec.dim}, found grid {db.grid}, d = {db.dim}.")
    return EmbeddingDatabase(db, spec, info, _rows(db.path / ROWS_FILE, db.rows))


def _rows(path: Path, n: int) -> np.ndarray:
    """The source-latents row of every vector: integers, one per vector (float ids would index silently wrong)."""
    try:
        rows = np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the row ids ({exc}). Re-run `rissole embed`.") from exc
    if rows.shape != (n,) or rows.dtype.kind not in "iu" or (n and rows.min() < 0):
        raise DataError(f"{path}: row ids {rows.dtype} {list(rows.shape)}, expected non-negative integers [{n}]. "
                        "Re-run `rissole embed`.")
    return rows
