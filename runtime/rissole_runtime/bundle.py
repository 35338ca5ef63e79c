"""The edge bundle on disk, and opening it with every part checked against the manifest (numpy only).

    BUNDLE/
      manifest.json        format, model kind, shapes, dtypes, grid, k, schedule, DDIM timesteps, guidance,
                           prediction type, scale_factor, versions, and bytes + sha256 of every file
      denoiser.onnx        eps(x, t, neighbours[, position]); a v-model is turned into eps in the graph
      decoder.onnx         unscaled latents -> images in [-1, 1]
      proposal.npy         p_D (float64, one entry per database row; uniform without a train table)
      db/                  a rissole block database (blocks.npy memmap + manifest.json) with the
                           `database` neighbour table (k columns; k + 1 for kNN-Diffusion) in db/neighbours/
      text_encoder.onnx    optional (rdm in a text-image space): input_ids, attention_mask -> unit embedding,
      tokenizer.json       with its Hugging Face fast-tokenizer file, for `rissole-run --prompt`

Three kinds (manifest["model"]["kind"]) share this layout:

    rissole  denoiser over g x g blocks; db/ is the block database; neighbours (B, k, c, s, s) are the
             neighbours' blocks at the sample's own position, times scale_factor
    rdm      RDM's UNet over the whole latent, described as grid 1 with one block (block = latent);
             db/ is the embedding database (a grid-1 block database: blocks.npy (1, rows, d) holds the
             unit embeddings); neighbours (B, k, d) are its rows at the table's ids, unscaled
    rarm     no denoiser.onnx: context.onnx (neighbours (B, k, d) -> every block's cross-attention
             keys/values), step.onnx (one code position: the cache in, that position's keys/values out) and
             codebook.npy (codes -> latents for decoder.onnx); db/ and neighbours as for rdm

rissole-export writes this layout (it imports the names from here); rissole-run reads it. Opening
is fast (sizes, manifests, shapes; the database is memory-mapped, not read); `verify=True` also
recomputes every sha256.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rissole_runtime.diffusion.schedule import NoiseSchedule
from rissole_runtime.errors import DataError
from rissole_runtime.fileio import sha256_file
from rissole_runtime.retrieval.database import BlockDatabase, open_database
from rissole_runtime.retrieval.tables import open_table
from rissole_runtime.validate import BOOL, DICT, INT, LIST, NUM, STR, Field, check_schema, contained_path, read_json

FORMAT = "rissole-edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DENOISER = "denoiser.onnx"
CONTEXT = "context.onnx"  # rarm
STEP = "step.onnx"  # rarm
CODEBOOK = "codebook.npy"  # rarm
DECODER = "decoder.onnx"
PROPOSAL = "proposal.npy"
DB_DIR = "db"
TABLE = "database"
TEXT_ENCODER = "text_encoder.onnx"  # rdm bundles in a text-image space: prompt -> embedding (rissole_runtime.text)
TOKENIZER = "tokenizer.json"


@dataclass(frozen=True)
class BundleKind:
    """What the runtime must know of a bundle kind; the runtime's one table of kinds (BUNDLE_KINDS)."""

    name: str
    diffusion: bool  # denoiser.onnx in the DDIM loop (rissole_runtime.sampler.EdgeSampler); else RARM's code loop
    embedding_database: bool  # db/ is an embedding database (neighbour vectors), not the model's blocks
    networks: tuple[str, ...]  # the ONNX files besides decoder.onnx
    extra_files: tuple[str, ...] = ()  # other arrays the sampler loads


BUNDLE_KINDS: dict[str, BundleKind] = {k.name: k for k in (
    BundleKind("rissole", diffusion=True, embedding_database=False, networks=(DENOISER,)),
    BundleKind("rdm", diffusion=True, embedding_database=True, networks=(DENOISER,)),
    BundleKind("rarm", diffusion=False, embedding_database=True, networks=(CONTEXT, STEP), extra_files=(CODEBOOK,)),
)}
KINDS = tuple(BUNDLE_KINDS)
FIX = "Re-export the bundle with `rissole-export CKPT --out BUNDLE`."

# What the runtime reads from manifest.json, checked when the bundle opens (a bundle is untrusted input).
SHAPE = Field(LIST, length=3, items=INT, min=1)
MANIFEST_SCHEMA = {
    "format": Field(STR), "format_version": Field(INT), "model": Field(DICT), "files": Field(DICT),
    "database": Field(DICT), "decoder": Field(DICT), "sampler": Field(DICT), "batch": Field(DICT),
    "scale_factor": Field(NUM), "schedule": Field(DICT, nullable=True), "guidance": Field(NUM),
    "top_m": Field(NUM),
}
MODEL_SCHEMA = {
    "kind": Field(STR, required=False), "grid": Field(INT, min=1), "num_blocks": Field(INT, min=1),
    "k": Field(INT, min=0), "latent_shape": SHAPE, "block_shape": SHAPE, "retrieval": Field(BOOL),
    "position": Field(BOOL), "own_embedding": Field(BOOL, required=False),
}
SECTION_SCHEMAS = {
    "database": {"rows": Field(INT, min=1), "dtype": Field(STR), "sha256": Field(STR)},
    "batch": {"max_samples": Field(INT, min=1)},
    "sampler": {"num_steps": Field(INT, min=1)},
    "decoder": {"inputs": Field(DICT)},
}
TEXT_SCHEMA = {"file": Field(STR), "tokenizer": Field(STR), "max_tokens": Field(INT, min=1)}
FILE_SCHEMA = {"bytes": Field(INT, min=0), "sha256": Field(STR)}


@dataclass
class Bundle:
    """An opened bundle: its manifest, the memory-mapped database, neighbour ids and proposal."""

    path: Path
    manifest: dict[str, Any]
    db: BlockDatabase
    neighbour_ids: np.ndarray | None  # int32 (rows, k) memmap; None for a model without retrieval
    proposal: np.ndarray  # float64 (rows,)

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def kind(self) -> str:
        return model_kind(self.manifest)

    @property
    def kind_info(self) -> BundleKind:
        return BUNDLE_KINDS[self.kind]

    @property
    def grid(self) -> int:
        return int(self.model["grid"])

    @property
    def num_blocks(self) -> int:
        return int(self.model["num_blocks"])

    @property
    def k(self) -> int:
        return int(self.model["k"])

    @property
    def block_shape(self) -> tuple[int, int, int]:
        c, h, w = self.model["block_shape"]
        return int(c), int(h), int(w)

    @property
    def retrieval(self) -> bool:
        return bool(self.model["retrieval"])

    @property
    def own_embedding(self) -> bool:
        """kNN-Diffusion: the model conditions on a query embedding (a database row's, or a prompt's) plus its k
        nearest database rows, 1 + k vectors."""
        return bool(self.model.get("own_embedding", False))

    @property
    def table_k(self) -> int:
        """Columns of the shipped `database` table: k, and one more for kNN-Diffusion (the row lists itself)."""
        return self.k + int(self.own_embedding)

    @property
    def text_encoder(self) -> dict[str, Any] | None:
        """The manifest's text_encoder section, or None for a bundle without one."""
        return self.manifest.get("text_encoder")

    @property
    def position(self) -> bool:
        return bool(self.model["position"])

    @property
    def scale_factor(self) -> float:
        return float(self.manifest["scale_factor"])

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.manifest["schedule"], str(self.path / MANIFEST))

    @property
    def max_samples(self) -> int:
        return int(self.manifest["batch"]["max_samples"])

    def file(self, name: str) -> Path:
        return member(self.path, name)


def member(root: Path, rel: str, what: str = "the bundle manifest") -> Path:
    """The one way the runtime turns a name from a bundle into a path: refused unless it stays inside the bundle
    (no absolute path, no `..`, no symlink resolving outside)."""
    return contained_path(root, rel, what)


def _fail(part: Path | str, msg: str) -> DataError:
    return DataError(f"{part}: {msg} {FIX}")


def model_kind(manifest: dict[str, Any]) -> str:
    return str(manifest["model"].get("kind", "rissole"))


def database_layout(manifest: dict[str, Any]) -> dict[str, Any]:
    """grid and shapes db/manifest.json must have: the model's blocks (rissole), or the d-vectors as one
    1 x 1 block each (rdm, rarm: an embedding database)."""
    model = manifest["model"]
    if BUNDLE_KINDS[model_kind(manifest)].embedding_database:
        d = int(model["embedding"]["dim"])
        return {"grid": 1, "latent_shape": [d, 1, 1], "block_shape": [d, 1, 1]}
    return {"grid": int(model["grid"]), "latent_shape": list(model["latent_shape"]),
            "block_shape": list(model["block_shape"])}


def read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise _fail(mpath, "missing; this is not an edge bundle.")
    manifest = read_json(mpath, FIX, "JSON")
    check_schema(manifest, {"format": Field(STR, nullable=True), "format_version": Field(INT, nullable=True)},
                 mpath, fix=FIX)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise _fail(mpath, f"expected {FORMAT} v{FORMAT_VERSION}, found {manifest.get('format')} v{manifest.get('format_version')}.")
    check_schema(manifest, MANIFEST_SCHEMA, mpath, fix=FIX)
    check_schema(manifest["model"], MODEL_SCHEMA, mpath, "model", fix=FIX)
    for section, schema in SECTION_SCHEMAS.items():
        check_schema(manifest[section], schema, mpath, section, fix=FIX)
    if manifest.get("text_encoder") is not None:
        check_schema(manifest["text_encoder"], TEXT_SCHEMA, mpath, "text_encoder", fix=FIX)
        for key in ("file", "tokenizer"):
            if manifest["text_encoder"][key] not in manifest["files"]:
                raise _fail(mpath, f"text_encoder.{key} {manifest['text_encoder'][key]!r} is not among its files.")
    for rel, info in manifest["files"].items():
        member(path, rel, f"{mpath} (files)")
        check_schema(info, FILE_SCHEMA, mpath, f"files.{rel}", fix=FIX)
    if model_kind(manifest) not in KINDS:
        raise _fail(mpath, f"a bundle of kind {model_kind(manifest)!r}; this runtime samples "
                           f"{', '.join(KINDS)} bundles.")
    _check_self_consistent(mpath, manifest["model"])
    return manifest


def _check_self_consistent(mpath: Path, model: dict[str, Any]) -> None:
    """grid, blocks and shapes of the manifest must describe one latent cut one way."""
    g, b = int(model["grid"]), int(model["num_blocks"])
    c, h, w = model["latent_shape"]
    bc, bh, bw = model["block_shape"]
    if b != g * g or (bc, bh * g, bw * g) != (c, h, w):
        raise _fail(mpath, f"grid {g}, {b} blocks of {[bc, bh, bw]} do not tile the latent {[c, h, w]}; the manifest is corrupt.")


def check_files(path: Path, manifest: dict[str, Any], verify: bool, progress: bool = False) -> None:
    """Every listed file is present with its size; with verify, its sha256 too."""
    for rel, info in manifest["files"].items():
        f = member(path, rel, "the manifest's files")
        if not f.is_file():
            raise _fail(f, f"missing ({info.get('role', 'part of the bundle')}).")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise _fail(f, f"{size} bytes on disk, the manifest expects {info['bytes']}: the file is truncated or "
                           "belongs to another export.")
    if verify:
        for rel, info in manifest["files"].items():
            found = sha256_file(member(path, rel, "the manifest's files"), progress=progress)
            if found != info["sha256"]:
                raise _fail(path / rel, f"sha256 {found[:16]}, the manifest expects {info['sha256'][:16]}: the file is corrupt.")


def check_database(path: Path, manifest: dict[str, Any], db: BlockDatabase) -> None:
    """The database's own manifest must agree with the bundle's (grid, shapes, rows, dtype, checksum)."""
    want, layout = manifest["database"], database_layout(manifest)
    pairs = [
        ("grid", db.grid, layout["grid"]),
        ("latent_shape", list(db.latent_shape), layout["latent_shape"]),
        ("block_shape", list(db.block_shape), layout["block_shape"]),
        ("rows", db.rows, int(want["rows"])),
        ("dtype", db.dtype_name(), want["dtype"]),
        ("sha256", db.manifest["sha256"], want["sha256"]),
    ]
    for key, found, expect in pairs:
        if found != expect:
            raise _fail(db.path / "manifest.json", f"{key} is {found}, but {path / MANIFEST} expects {expect}: the "
                                                   "database and the manifest come from different exports.")


def _check_codebook(path: Path, manifest: dict[str, Any]) -> None:
    """An RARM bundle's codebook must have one row per code and the latent's channels."""
    book = np.load(member(path, CODEBOOK), mmap_mode="r")
    want = [int(manifest["model"]["vocab_size"]), int(manifest["model"]["latent_shape"][0])]
    if list(book.shape) != want or book.dtype != np.float32:
        raise _fail(path / CODEBOOK, f"{book.dtype} {list(book.shape)}, expected float32 {want} (codes, channels).")


def open_bundle(path: str | os.PathLike, verify: bool = False, progress: bool = False) -> Bundle:
    """Open and check a bundle; refuse one whose parts disagree, naming the part."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such bundle directory. Write one with `rissole-export CKPT --out {path}`.")
    manifest = read_manifest(path)
    for f in sorted(path.rglob("*")):  # fixed names too (db/, decoder.onnx...) may be symlinks leaving the bundle
        member(path, f.relative_to(path).as_posix(), "a file in the bundle")
    # checks blocks.npy against the database manifest (size, shape, dtype); rows are read with pread, so a
    # database in the page cache is not mapped into the process (peak RSS the same cold and warm)
    db = open_database(path / DB_DIR, positional_reads=True)
    check_database(path, manifest, db)
    check_files(path, manifest, verify, progress)
    if CODEBOOK in BUNDLE_KINDS[model_kind(manifest)].extra_files:
        _check_codebook(path, manifest)
    rows = db.rows
    ids = None
    if manifest["model"]["retrieval"]:
        table = open_table(db, TABLE)
        want_k = int(manifest["model"]["k"]) + int(bool(manifest["model"].get("own_embedding", False)))
        if table.ids.shape != (rows, want_k):
            raise _fail(db.path / "neighbours", f"table {TABLE!r} is {list(table.ids.shape)}, expected "
                                                f"{[rows, want_k]} (rows, k{' + 1' if want_k > manifest['model']['k'] else ''}).")
        ids = table.ids
    proposal = np.load(member(path, PROPOSAL), mmap_mode="r")
    if proposal.shape != (rows,) or proposal.dtype != np.float64:
        raise _fail(path / PROPOSAL, f"{proposal.dtype} {list(proposal.shape)}, expected float64 [{rows}].")
    return Bundle(path, manifest, db, ids, np.asarray(proposal))
