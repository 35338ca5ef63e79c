"""The retrieval core on real latent blocks: 3,000 Fashion-MNIST training images through the shipped VQ-GAN."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rissole.cli.main import main
from rissole_runtime.errors import DataError
from rissole.retrieval import build_database, merge_blocks, open_database, split_blocks
from rissole.retrieval.evaluate import recall_at_k
from rissole.retrieval.keys import KeySet, latent_keys
from rissole.retrieval.neighbours import drop_self, make_tables, open_table
from rissole_runtime.retrieval.proposal import PseudoQuerySampler, proposal_from_table, top_m
from rissole.retrieval.searchers import load_searcher, make_searcher

N_ROWS, N_QUERIES = 3000, 300

# The recall@10 each approximate backend reaches against exact search on these rows with these
# parameters; README "Retrieval" documents the same figures.
APPROX = {
    "scann-ah": ("scann", {"mode": "ah", "reorder": 100}, 0.95),
    "scann-tree": ("scann", {"mode": "tree_ah", "num_leaves": 50, "leaves_to_search": 10, "reorder": 100}, 0.95),
    "scann-rerank": ("scann", {"mode": "ah", "rerank": True, "candidates": 100}, 0.95),
    "faiss-hnsw": ("faiss-hnsw", {"ef_search": 64}, 0.95),
    "faiss-ivfpq": ("faiss-ivfpq", {"nlist": 50, "nprobe": 16, "k_factor": 8}, 0.95),
    "faiss-ivfpq-rerank": ("faiss-ivfpq", {"nlist": 50, "nprobe": 16, "rerank": True, "candidates": 100}, 0.95),
}


@pytest.fixture(scope="module")
def latents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rissole.autoencoder import load_vqgan
    from rissole.checkpoint import load_checkpoint
    from rissole.data import load_source
    from rissole.latents import encode_images
    from rissole.paths import SHIPPED_VQGAN

    d = tmp_path_factory.mktemp("latents")
    vq = load_vqgan(SHIPPED_VQGAN)
    h = load_checkpoint(SHIPPED_VQGAN).weights_hash()
    out = {}
    for name, spec, n in (("train", "fmnist:train", N_ROWS), ("test", "fmnist:test", N_QUERIES)):
        data = load_source(spec, limit=n)
        encode_images(vq, data.images, d / f"{name}.npy", str(SHIPPED_VQGAN), h, spec, data.labels, progress=False)
        out[name] = d / f"{name}.npy"
    return out


@pytest.fixture(scope="module")
def db(latents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    return build_database(latents["train"], tmp_path_factory.mktemp("db") / "db", grid=2, progress=False)


@pytest.fixture(scope="module")
def queries(latents: dict[str, Path], db) -> dict[str, np.ndarray]:
    z = np.load(latents["test"])
    return {mode: latent_keys(z, db.grid, mode) for mode in ("block0", "latent")}


def brute_force(keys: KeySet, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Everything in float64 at once: the definition exact search must reproduce."""
    K = keys.materialise().astype(np.float64)
    s = q.astype(np.float64) @ K.T
    order = np.lexsort((np.broadcast_to(np.arange(K.shape[0]), s.shape), -s), axis=-1)[:, :k]
    return order, np.take_along_axis(s, order, 1)


def assert_same_ids(ids: np.ndarray, ref_ids: np.ndarray, ref_scores: np.ndarray) -> None:
    """Identical ids, except where float64 scores tie within float32 rounding (those may swap)."""
    padded = np.pad(ref_scores, ((0, 0), (1, 1)), constant_values=np.inf)
    gap = np.minimum(np.abs(padded[:, 1:-1] - padded[:, :-2]), np.abs(padded[:, 1:-1] - padded[:, 2:]))
    distinct = gap > 1e-6
    assert distinct.mean() > 0.99
    np.testing.assert_array_equal(ids[distinct], ref_ids[distinct])


def test_blocks_split_and_merge_are_inverse() -> None:
    z = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    b = split_blocks(z, 2)
    assert b.shape == (2, 4, 3, 4, 4)
    np.testing.assert_array_equal(b[:, 1], z[:, :, :4, 4:])  # block 1 = top-right tile
    np.testing.assert_array_equal(b[:, 2], z[:, :, 4:, :4])
    np.testing.assert_array_equal(merge_blocks(b, 2), z)
    torch.testing.assert_close(split_blocks(torch.from_numpy(z), 4), torch.from_numpy(split_blocks(z, 4)))
    with pytest.raises(ValueError, match="cannot be cut"):
        split_blocks(z, 3)


def test_database_rows_are_the_latent_blocks(db, latents: dict[str, Path]) -> None:
    z = np.load(latents["train"])
    assert db.array.shape == (4, N_ROWS, 160) and not db.array.flags.writeable
    assert isinstance(db.array, np.memmap)
    ids = np.array([0, 17, 2999, 17])
    np.testing.assert_array_equal(db.blocks(ids), split_blocks(z[ids], 2))
    np.testing.assert_array_equal(merge_blocks(db.blocks(ids), 2), z[ids])
    assert db.blocks(ids.reshape(2, 2)).shape == (2, 2, 4, 10, 4, 4)
    assert db.manifest["checkpoint_hash"] == json.loads(latents["train"].with_suffix(".json").read_text())["checkpoint_hash"]
    np.testing.assert_array_equal(db.labels(), np.load(latents["train"].with_suffix(".labels.npy")))
    with pytest.raises(IndexError):
        db.blocks([N_ROWS])
    with pytest.raises(DataError, match="one-block"):  # vectors() is for embedding databases only
        db.vectors(ids)


def test_float16_database(latents: dict[str, Path], tmp_path: Path) -> None:
    half = build_database(latents["train"], tmp_path / "h", grid=4, dtype="float16", progress=False)
    assert half.array.dtype == np.float16 and half.array.shape == (16, N_ROWS, 40)
    z = np.load(latents["train"])[:5]
    np.testing.assert_allclose(half.blocks(range(5)), split_blocks(z, 4), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype, grid", [("float32", 2), ("float16", 1)])
def test_positional_reads_gather_the_same_rows(latents: dict[str, Path], tmp_path: Path, dtype: str, grid: int) -> None:
    """The runtime's pread gather (flat RSS on a warm cache) returns exactly the mapped rows, any dtype."""
    from rissole.retrieval.database import gather_neighbours

    build_database(latents["train"], tmp_path / "d", grid=grid, dtype=dtype, progress=False)
    mapped, pread = open_database(tmp_path / "d"), open_database(tmp_path / "d", positional_reads=True)
    ids = np.random.default_rng(0).integers(0, mapped.rows, (7, 5))
    ids[0, 0], ids[-1, -1] = 0, mapped.rows - 1  # both ends of the file
    np.testing.assert_array_equal(pread.blocks(ids), mapped.blocks(ids))
    np.testing.assert_array_equal(gather_neighbours(pread, ids, 3), gather_neighbours(mapped, ids, 3))
    if grid == 1:
        np.testing.assert_array_equal(pread.vectors(ids), mapped.vectors(ids))
    with pytest.raises(IndexError):
        pread.blocks([mapped.rows])


@pytest.mark.parametrize("mode", ["block0", "latent"])
def test_exact_search_equals_brute_force(db, queries: dict[str, np.ndarray], mode: str) -> None:
    keys = KeySet(db, mode)
    q = queries[mode]
    ex = make_searcher("exact", chunk_rows=700).build(keys)  # several chunks, one ragged
    ids, scores = ex.search(q, 20)
    ref_ids, ref_scores = brute_force(keys, q, 20)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)
    assert_same_ids(ids, ref_ids, ref_scores)


def test_keys_agree_between_database_and_latents(db, latents: dict[str, Path]) -> None:
    z = np.load(latents["train"])[:50]
    from benchmarks.retrieval import key_set, query_keys  # all_blocks: the benchmark's key mode

    for mode in ("block0", "latent", "all_blocks"):
        keys = key_set(db, mode)
        direct = query_keys(z, 2, mode)
        if mode == "all_blocks":
            rows = np.concatenate([np.arange(50) + i * N_ROWS for i in range(4)])
            np.testing.assert_allclose(keys.gather(rows), direct, atol=1e-6)
        else:
            np.testing.assert_allclose(keys.rows(0, 50), direct, atol=1e-6)
            np.testing.assert_allclose(keys.gather(np.arange(50)), direct, atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(direct, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(APPROX))
def test_approximate_backend_recall_and_round_trip(db, queries: dict[str, np.ndarray], name: str, tmp_path: Path) -> None:
    backend, params, expected = APPROX[name]
    keys = KeySet(db, "block0")
    q = queries["block0"]
    truth, _ = make_searcher("exact").build(keys).search(q, 10)
    s = make_searcher(backend, **params).build(keys)
    ids, scores = s.search(q, 10)
    rec = recall_at_k(ids, truth, 10)
    assert rec >= expected, f"{name}: recall@10 {rec:.3f} < {expected}"
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "results must be sorted best first"
    s.save(tmp_path / "idx")
    loaded = load_searcher(tmp_path / "idx", keys)
    ids2, scores2 = loaded.search(q, 10)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_allclose(scores2, scores, atol=1e-6)


def test_index_of_another_database_refused(db, latents: dict[str, Path], tmp_path: Path) -> None:
    s = make_searcher("exact").build(KeySet(db, "block0"))
    s.save(tmp_path / "idx")
    with pytest.raises(DataError, match="key mode block0"):
        load_searcher(tmp_path / "idx", KeySet(db, "latent"))
    other = build_database(latents["test"], tmp_path / "other", grid=2, progress=False)
    with pytest.raises(DataError, match="Rebuild it"):
        load_searcher(tmp_path / "idx", KeySet(other, "block0"))


def test_neighbour_tables_exclude_self_only_for_training(db, tmp_path: Path) -> None:
    keys = KeySet(db, "block0")
    make_tables(db, keys, "exact", {}, k=10, progress=False)
    train, database = open_table(db, "train"), open_table(db, "database")
    assert train.ids.dtype == np.int32 and train.ids.shape == (N_ROWS, 10)
    rows = np.arange(N_ROWS)[:, None]
    assert not (np.asarray(train.ids) == rows).any(), "a training row is among its own neighbours"
    assert (np.asarray(database.ids) == rows).any(axis=1).all(), "a pseudo-query must retrieve itself"
    # the training table is the database table with the row itself removed
    ref, ref_scores = brute_force(keys, keys.rows(0, N_ROWS), 11)
    assert_same_ids(np.asarray(train.ids), *drop_self(ref, ref_scores, np.arange(N_ROWS), 10))
    assert train.meta["exclude_self"] is True and database.meta["exclude_self"] is False


def test_drop_self_removes_worst_when_absent() -> None:
    ids = np.array([[5, 1, 2], [7, 8, 9]])
    out, sc = drop_self(ids, -ids.astype(np.float32), np.array([1, 3]), 2)
    np.testing.assert_array_equal(out, [[5, 2], [7, 8]])


def test_tables_with_separate_training_set(db, latents: dict[str, Path]) -> None:
    make_tables(db, KeySet(db, "block0"), "exact", {}, k=5, queries_path=latents["test"], progress=False)
    train = open_table(db, "train")
    assert train.ids.shape == (N_QUERIES, 5) and train.meta["exclude_self"] is False
    truth, _ = make_searcher("exact").build(KeySet(db, "block0")).search(latent_keys(np.load(latents["test"]), 2, "block0"), 5)
    np.testing.assert_array_equal(np.asarray(train.ids), truth)


def test_proposal_and_top_m(db) -> None:
    rng = np.random.default_rng(0)
    table = rng.integers(0, 1000, size=(500, 10)) ** 2 % 1000  # skewed counts
    p = proposal_from_table(table, 1000)
    assert p.shape == (1000,) and math.isclose(p.sum(), 1.0)
    np.testing.assert_allclose(p, np.bincount(table.ravel(), minlength=1000) / table.size)
    for m in (0.01, 0.05, 0.1, 0.33):
        q = top_m(p, m)
        assert math.isclose(q.sum(), 1.0)
        assert (q > 0).sum() == min(math.ceil(m * 1000), (p > 0).sum())
        kept = np.flatnonzero(q)
        assert p[kept].min() >= np.sort(p)[::-1][math.ceil(m * 1000) - 1]  # the most likely rows are kept
    uniform = PseudoQuerySampler(None, 1000, m=1.0, seed=3)
    np.testing.assert_allclose(uniform.p, 1 / 1000)
    s1, s2 = PseudoQuerySampler(p, 1000, m=0.1, seed=7), PseudoQuerySampler(p, 1000, m=0.1, seed=7)
    draws = s1.sample(20000)
    np.testing.assert_array_equal(draws, s2.sample(20000))
    assert set(draws) <= set(np.flatnonzero(s1.p))
    freq = np.bincount(draws, minlength=1000) / len(draws)
    assert np.abs(freq - s1.p).max() < 0.01
    with pytest.raises(ValueError):
        top_m(p, 0.0)


def test_truncated_and_mismatched_databases_refused(latents: dict[str, Path], tmp_path: Path) -> None:
    good = build_database(latents["test"], tmp_path / "db", grid=2, progress=False)
    blocks = good.path / "blocks.npy"
    data = blocks.read_bytes()
    blocks.write_bytes(data[:-1000])
    with pytest.raises(DataError, match="truncated"):
        open_database(good.path)
    blocks.write_bytes(data)
    manifest = json.loads((good.path / "manifest.json").read_text())
    (good.path / "manifest.json").write_text(json.dumps({**manifest, "rows": 7}))
    with pytest.raises(DataError, match="manifest says"):
        open_database(good.path)
    (good.path / "manifest.json").write_text(json.dumps(manifest))
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    blocks.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="checksum mismatch"):
        open_database(good.path).verify(progress=False)
    blocks.write_bytes(data)
    open_database(good.path).verify(progress=False)
    with pytest.raises(DataError, match="VQ-GAN"):
        open_database(good.path).check_vqgan("0" * 64)


def test_failed_builds_leave_existing_database_untouched(latents: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "db"
    build_database(latents["test"], out, grid=2, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match="already there"):
        build_database(latents["train"], out, grid=2, progress=False)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(latents["train"].read_bytes()[:5000])
    bad.with_suffix(".json").write_text(latents["train"].with_suffix(".json").read_text())
    with pytest.raises(DataError, match="truncated or corrupt"):
        build_database(bad, out, grid=2, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="cannot be cut"):
        build_database(latents["train"], out, grid=3, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "bad.npy", "db"], "temporary files left behind"


RSS_PROBE = """
import sys, numpy as np
from rissole.retrieval import open_database
def rss():
    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) * 1024
np.zeros(1); before = rss()
db = open_database(sys.argv[1]); x = db.blocks([0, 5, 9]); opened = rss()
total = float(np.asarray(db.array, dtype=np.float64).sum()); full = rss()
print(before, opened, full)
"""


def test_opening_does_not_read_the_file(latents: dict[str, Path], tmp_path: Path) -> None:
    import rissole.latents as L

    z = np.load(latents["train"])
    big = tmp_path / "big.npy"  # 12x the rows (36k): about 92 MB of blocks, so a full read is unmistakable
    np.save(big, np.concatenate([z] * 12))
    man = json.loads(latents["train"].with_suffix(".json").read_text())
    big.with_suffix(".json").write_text(json.dumps({**man, "shape": [len(z) * 12, *man["shape"][1:]], "count": len(z) * 12, "labels": None}))
    L.open_latents(big)
    db = build_database(big, tmp_path / "bigdb", grid=2, progress=False)
    size = db.manifest["file_bytes"]
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(db.path)], capture_output=True, text=True, check=True)
    before, opened, full = map(int, out.stdout.split())
    assert opened - before < 0.05 * size, f"opening raised RSS by {(opened - before) / 2**20:.1f} MiB of {size / 2**20:.0f}"
    assert full - before > 0.5 * size  # the probe can see a full read


def test_db_cli(latents: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "db"
    assert main(["db", "build", str(latents["train"]), "--out", str(out), "--grid", "2"]) == 0
    assert main(["db", "build", str(latents["train"]), "--out", str(out)]) == 2  # exists, no --force
    assert main(["db", "neighbours", str(out), "--backend", "scann", "-k", "10", "--param", "mode=\"ah\""]) == 0
    assert main(["db", "inspect", str(out), "--spot-check", "100"]) == 0
    assert main(["db", "verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "table      train: 3000 x k=10" in text and "recall@10 vs exact on 100 rows" in text
    recall = float(text.split("recall@10 vs exact on 100 rows: ")[1].split()[0])
    assert recall >= 0.95
    assert "checksum OK" in text
    assert main(["db", "neighbours", str(out), "--param", "oops"]) == 2
