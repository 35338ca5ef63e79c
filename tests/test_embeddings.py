"""Neighbour embeddings and embedding databases: token layout, unit length, Inception at reduced size,
exact tables against brute force, provenance (rows, labels, latents), refusals, `rissole embed`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neighbour_data import one_thread  # noqa: F401  (autouse)
from neighbour_data import HALF, N_IMAGES, build_neighbour_data
from rissole.embeddings import (
    InceptionEmbedder,
    make_embedder,
    open_embedding_database,
    open_embeddings,
    write_embeddings,
)
from rissole_runtime.errors import DataError
from rissole.retrieval.neighbours import open_table


@pytest.fixture(scope="module")
def nd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_neighbour_data(tmp_path_factory.mktemp("emb"))


def test_vq_embedding_is_the_latent_as_raster_tokens_of_unit_length(nd: dict[str, Any]) -> None:
    from rissole.autoencoder import load_vqgan
    from rissole.paths import SHIPPED_VQGAN

    z = nd["latents"][:5]
    emb = make_embedder("vq", (10, 8, 8))
    v = emb.embed_latents(z)
    assert v.shape == (5, 640) and emb.spec.tokens == 64 and emb.spec.token_dim == 10
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    tokens = v.reshape(5, 64, 10)
    scale = np.linalg.norm(z.reshape(5, -1), axis=1)
    for p in (0, 9, 63):  # token p is the latent's column at row p // 8, column p % 8
        np.testing.assert_allclose(tokens[:, p] * scale[:, None], z[:, :, p // 8, p % 8], rtol=1e-5, atol=1e-6)
    from_images = make_embedder("vq", (10, 8, 8), vqgan=load_vqgan(SHIPPED_VQGAN)).embed_images(nd["images"][:5])
    np.testing.assert_allclose(from_images, v, atol=1e-4)


def test_inception_layers_reproduce_the_network_and_run_at_reduced_size() -> None:
    from rissole.metrics.inception import load_inception

    emb = InceptionEmbedder(size=299)
    images = np.random.default_rng(0).integers(0, 256, (2, 1, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        full = load_inception(device="cpu")(emb.preprocess(images))
    torch.testing.assert_close(emb.features(images), full, rtol=1e-4, atol=1e-4)
    small = InceptionEmbedder(size=75).embed_images(images)
    assert small.shape == (2, 2048)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match=">= 75"):
        InceptionEmbedder(size=64)


def test_embedding_tables_are_exact_against_brute_force(nd: dict[str, Any]) -> None:
    edb = open_embedding_database(nd["db_b"])
    assert edb.db.grid == 1 and edb.db.num_blocks == 1 and len(edb) == N_IMAGES - HALF
    vectors = edb.embeddings(np.arange(len(edb)))
    queries = open_embeddings(nd["a"]).vectors()
    train = open_table(edb.db, "train")
    expect = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(np.asarray(train.ids), expect)
    database = open_table(edb.db, "database")
    expect_db = np.argsort(-(vectors @ vectors.T), axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(np.asarray(database.ids)[:, 1:], expect_db[:, 1:])
    assert (np.asarray(database.ids)[:, 0] == np.arange(len(edb))).all()  # a database row is its own first neighbour
    same = open_table(open_embedding_database(nd["db_same"]).db, "train")
    assert not (np.asarray(same.ids) == np.arange(N_IMAGES)[:, None]).any()  # same set: the row itself excluded


def test_database_rows_keep_their_provenance(nd: dict[str, Any], tmp_path: Path) -> None:
    edb = open_embedding_database(nd["db_b"])
    np.testing.assert_array_equal(edb.rows, np.arange(HALF, N_IMAGES))
    np.testing.assert_allclose(edb.latents(np.array([0, 7])), nd["latents"][[HALF, HALF + 7]])
    np.testing.assert_array_equal(edb.db.labels(), nd["labels"][HALF:])
    one = open_embedding_database(nd["db_class"])
    assert (one.db.labels() == nd["class"]).all() and len(one) == (nd["labels"][HALF:] == nd["class"]).sum()
    with pytest.raises(DataError, match="not of neighbour embeddings"):
        from rissole.retrieval import build_database

        build_database(nd["dir"] / "lat.npy", tmp_path / "blocks", grid=2, progress=False)
        open_embedding_database(tmp_path / "blocks")
    with pytest.raises(DataError, match="not an embeddings file"):
        open_embeddings(nd["dir"] / "lat.npy")
    with pytest.raises(DataError, match="rows must be"):
        write_embeddings(make_embedder("vq", (10, 8, 8)), nd["dir"] / "lat.npy", tmp_path / "x.npy", np.array([N_IMAGES]))


def test_embed_cli_builds_a_searchable_database(nd: dict[str, Any], tmp_path: Path) -> None:
    from rissole.cli.main import main

    lat = str(nd["dir"] / "lat.npy")
    assert main(["embed", lat, "--rows", "0:50", "--out", str(tmp_path / "q.npy")]) == 0
    assert main(["embed", lat, "--rows", "50:120", "--out", str(tmp_path / "d.npy"), "--db", str(tmp_path / "db")]) == 0
    assert main(["db", "neighbours", str(tmp_path / "db"), "--backend", "exact", "--keys", "latent", "-k", "4",
                 "--queries", str(tmp_path / "q.npy")]) == 0
    edb = open_embedding_database(tmp_path / "db")
    assert len(edb) == 70 and open_table(edb.db, "train").ids.shape == (50, 4)
    assert main(["embed", lat, "--rows", "oops", "--out", str(tmp_path / "z.npy")]) == 2
