"""Text-guided RDM (RDM paper, Sec. 3.3 and 4.2) on small real data: Fashion-MNIST latents of the shipped
VQ-GAN embedded with the shipped joint image tower, a briefly trained RDM on them, and the three prompt
strategies, post-hoc class conditioning, a style database swap, and the CLI's errors and figure."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neighbour_data import one_thread  # noqa: F401  (autouse)
from neighbour_data import HALF, N_IMAGES, rdm_config
from rissole.heads.pipeline import SamplingOptions
from rissole_runtime.errors import ConfigError

PROMPTS = ("a photo of a trouser", "a photo of a sneaker")
TROUSER = 1


@pytest.fixture(scope="module")
def joint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Joint-space embedding databases of 400 Fashion-MNIST training images: rows 0..199 train, 200..399 the
    database (with its train table), and the database half's trousers alone (a one-style database)."""
    from rissole.autoencoder import load_vqgan
    from rissole.checkpoint import load_checkpoint
    from rissole.data import load_source
    from rissole.embeddings import build_embedding_database, make_embedder, write_embeddings
    from rissole.heads.rdm.train import train_rdm
    from rissole.latents import encode_images
    from rissole.paths import SHIPPED_VQGAN
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import make_tables

    d = tmp_path_factory.mktemp("text")
    data = load_source("fmnist:train", limit=N_IMAGES)
    h = load_checkpoint(SHIPPED_VQGAN).weights_hash()
    encode_images(load_vqgan(SHIPPED_VQGAN), data.images, d / "lat.npy", str(SHIPPED_VQGAN), h, "fmnist:train",
                  labels=data.labels, progress=False)
    emb = make_embedder("joint")
    write_embeddings(emb, d / "lat.npy", d / "a.npy", np.arange(HALF), progress=False)
    write_embeddings(emb, d / "lat.npy", d / "b.npy", np.arange(HALF, N_IMAGES), progress=False)
    b = build_embedding_database(d / "b.npy", d / "db_b", progress=False)
    make_tables(b.db, KeySet(b.db, "latent"), "exact", {}, k=6, queries_path=d / "a.npy", progress=False)
    trousers = HALF + np.flatnonzero(data.labels[HALF:] == TROUSER)
    write_embeddings(emb, d / "lat.npy", d / "t.npy", trousers, progress=False)
    t = build_embedding_database(d / "t.npy", d / "db_trousers", progress=False)
    make_tables(t.db, KeySet(t.db, "latent"), "exact", {}, k=6, progress=False)
    cfg = rdm_config(d / "db_b", embedder="joint", context_tokens=1, context_token_dim=384,
                     embedder_params={"tower": emb.spec.params["tower"]})
    cfg["train"]["steps"] = 4
    train_rdm(cfg, d / "run", progress=False)
    return {"dir": d, "ckpt": d / "run" / "final", "embedder": emb, "labels": data.labels, "trousers": trousers}


@pytest.fixture(scope="module")
def pipe(joint: dict[str, Any]) -> Any:
    from rissole.heads.registry import load_pipeline

    return load_pipeline(joint["ckpt"], device="cpu")


def exact_top(pipe: Any, query: np.ndarray, k: int) -> np.ndarray:
    """Brute force over the database's stored unit vectors: the rows a strategy must retrieve."""
    vectors = pipe.edb.embeddings(np.arange(len(pipe.edb)))
    return np.argsort(-(vectors @ query), kind="stable")[:k]


def test_each_strategy_conditions_on_what_the_paper_says(pipe: Any, joint: dict[str, Any]) -> None:
    text = joint["embedder"].embed_texts(list(PROMPTS))
    k = pipe.k
    n = 4
    c1 = pipe.conditioning(n, SamplingOptions(prompt=PROMPTS, strategy="text"))
    assert c1.context.shape == (n, 1, 384) and (c1.ids == -1).all()
    np.testing.assert_allclose(c1.context[:, 0], text[np.arange(n) % 2], atol=1e-6)  # prompts cycle
    c3 = pipe.conditioning(n, SamplingOptions(prompt=PROMPTS))  # default strategy: neighbours
    assert c3.context.shape == (n, k, 384)
    for i in range(n):
        np.testing.assert_array_equal(np.sort(c3.ids[i]), np.sort(exact_top(pipe, text[i % 2], k)))
        np.testing.assert_allclose(c3.context[i], pipe.edb.embeddings(c3.ids[i]), atol=0)
    c2 = pipe.conditioning(n, SamplingOptions(prompt=PROMPTS, strategy="text+neighbours"))
    assert c2.context.shape == (n, k, 384) and (c2.ids[:, 0] == -1).all()
    np.testing.assert_allclose(c2.context[:, 0], text[np.arange(n) % 2], atol=1e-6)
    np.testing.assert_array_equal(np.sort(c2.ids[:, 1:], 1), np.sort(c3.ids[:, : k - 1], 1))
    # the retrieval is meaningful in the joint space: "trouser" finds mostly trousers among 200 images
    labels = joint["labels"][pipe.edb.rows[c3.ids[0]]]
    assert (labels == TROUSER).mean() >= 0.5, labels


def test_class_conditioning_draws_k_of_a_pool_per_sample(pipe: Any, joint: dict[str, Any]) -> None:
    k, pool = pipe.k, 8
    c = pipe.conditioning(16, SamplingOptions(class_name="trouser", pool=pool, seed=3))
    text = joint["embedder"].embed_texts(["An image of a trouser"])[0]
    top = set(exact_top(pipe, text, pool).tolist())
    assert c.ids.shape == (16, k) and all(len(set(r)) == k and set(r) <= top for r in c.ids.tolist())
    assert len({tuple(sorted(r)) for r in c.ids.tolist()}) > 1  # drawn anew per sample
    again = pipe.conditioning(16, SamplingOptions(class_name="trouser", pool=pool, seed=3))
    np.testing.assert_array_equal(c.ids, again.ids)  # seeded
    with pytest.raises(ConfigError, match="--pool 2 is smaller than k"):
        pipe.conditioning(4, SamplingOptions(class_name="trouser", pool=2))


def test_prompted_samples_are_seeded_and_depend_on_the_prompt(joint: dict[str, Any]) -> None:
    from neighbour_data import randomise
    from rissole.heads.registry import load_pipeline

    pipe = load_pipeline(joint["ckpt"], device="cpu")
    randomise(pipe.model)  # 4 training steps leave the context projection near its zero start
    opts = SamplingOptions(prompt=PROMPTS, steps=4, guidance=2.0, seed=1)
    a, _ = pipe.sample(4, opts)
    b, _ = pipe.sample(4, opts)
    c, _ = pipe.sample(4, dataclasses.replace(opts, strategy="text"))
    assert a.shape == (4, 1, 32, 32) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).max() > 0


def test_style_database_swap_retrieves_only_that_database(joint: dict[str, Any]) -> None:
    from rissole.heads.registry import load_pipeline

    swapped = load_pipeline(joint["ckpt"], database=joint["dir"] / "db_trousers", device="cpu")
    c = swapped.conditioning(4, SamplingOptions(prompt=("a photo of a sneaker",)))
    assert set(swapped.edb.rows[c.ids.ravel()].tolist()) <= set(joint["trousers"].tolist())
    images, _ = swapped.sample(2, SamplingOptions(prompt=("a photo of a sneaker",), steps=3))
    assert images.shape == (2, 1, 32, 32)


def test_text_options_are_refused_where_they_mean_nothing(pipe: Any, tmp_path: Path) -> None:
    from rissole.cli.main import main
    from rissole.paths import SHIPPED_RISSOLE

    with pytest.raises(ConfigError, match="not both"):
        SamplingOptions(prompt=("a bag",), class_name="bag")
    with pytest.raises(ConfigError, match="give --prompt"):
        SamplingOptions(strategy="text")
    with pytest.raises(ConfigError, match="k >= 2"):
        pipe.conditioning(2, SamplingOptions(prompt=("a bag",), strategy="text+neighbours", k=1))
    out = tmp_path / "x.png"
    assert main(["sample", "--ckpt", str(SHIPPED_RISSOLE), "-n", "2", "--prompt", "a bag", "--out", str(out)]) == 2
    assert not out.exists()


def test_vq_embedding_has_no_text_tower(tmp_path_factory: pytest.TempPathFactory) -> None:
    from neighbour_data import build_neighbour_data
    from rissole.heads.rdm.train import train_rdm
    from rissole.heads.registry import load_pipeline

    nd = build_neighbour_data(tmp_path_factory.mktemp("vqtext"))
    cfg = rdm_config(nd["db_b"])
    cfg["train"]["steps"] = 1
    run = tmp_path_factory.mktemp("vqtext_run")
    train_rdm(cfg, run, progress=False)
    p = load_pipeline(run / "final", device="cpu")
    with pytest.raises(ConfigError, match="vq embeddings of d = 640.*no text tower"):
        p.conditioning(2, SamplingOptions(prompt=("a bag",)))


def test_cli_prompt_with_show_retrieval(joint: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    from rissole.cli.main import main

    out, fig = tmp_path / "s.png", tmp_path / "r.png"
    rc = main(["sample", "--ckpt", str(joint["ckpt"]), "-n", "3", "--prompt", *PROMPTS, "--strategy", "text+neighbours",
               "--steps", "3", "--sampler", "dpmpp2m", "--out", str(out), "--show-retrieval", str(fig)])
    assert rc == 0 and out.is_file()
    w, h = Image.open(fig).size
    assert h == 3 * (32 + 2) * 2 + 2 * 2 and w > 200  # three rows of 2x-scaled tiles beside the prompt column
    rc = main(["sample", "--ckpt", str(joint["ckpt"]), "-n", "2", "--class", "trouser", "--steps", "2",
               "--out", str(tmp_path / "c.png")])
    assert rc == 0


def test_mix_rows_keep_the_database_disjoint_from_training(tmp_path: Path) -> None:
    from rissole.data import load_source
    from rissole.data.stickers import build_stickers
    from rissole.paths import STICKER_REPEAT, STYLES, mix_rows

    build_stickers(tmp_path / "st", limit=60, progress=False)
    s = len(load_source(f"folder:{tmp_path / 'st'}:train", channels=3).images)
    rows = mix_rows(tmp_path / "st", n_fmnist=100)
    train, db = set(rows["train"].tolist()), set(rows["database"].tolist())
    assert not train & db and train | db == set(range(s + 100))
    assert len(rows["train"]) == STICKER_REPEAT * len(range(0, s, 2)) + 50  # stickers oversampled
    assert set().union(*(set(rows[st].tolist()) for st in STYLES)) == db  # the style databases split it
    assert all(r >= s for r in rows["fmnist"]) and all(r < s for st in ("emoji", "tuxpaint") for r in rows[st])


@pytest.fixture(scope="module")
def knn(joint: dict[str, Any]) -> dict[str, Any]:
    """kNN-Diffusion (model.own_embedding) and its no-kNN baseline (k = 0), briefly trained on the joint data."""
    from rissole.heads.rdm.train import train_rdm

    d = joint["dir"]
    out = {}
    for name, k in (("knn", 3), ("noknn", 0)):
        cfg = rdm_config(d / "db_b", embedder="joint", context_tokens=1, context_token_dim=384, k=k, own_embedding=True,
                         embedder_params={"tower": joint["embedder"].spec.params["tower"]})
        cfg["train"]["steps"] = 3
        out[name] = train_rdm(cfg, d / f"run_{name}", progress=False)
    return out


def test_knn_diffusion_trains_on_its_own_embedding_and_its_neighbours(knn: dict[str, Any], joint: dict[str, Any]) -> None:
    from rissole.embeddings import open_embeddings

    b = knn["knn"].batcher
    ids = np.array([0, 5, 7])
    nb = b.neighbours(ids).numpy()
    assert nb.shape == (3, 1 + 3, 384)
    own = open_embeddings(joint["dir"] / "a.npy").vectors()[ids]  # training rows are the query file's rows
    np.testing.assert_array_equal(nb[:, 0], own)
    np.testing.assert_array_equal(nb[:, 1:], b.edb.embeddings(np.asarray(b.table.ids[ids, :3])))
    assert knn["noknn"].batcher.neighbours(ids).shape == (3, 1, 384)


def test_knn_diffusion_samples_from_text_and_its_k_nearest_images(knn: dict[str, Any], joint: dict[str, Any]) -> None:
    from rissole.heads.registry import load_pipeline

    pipe = load_pipeline(joint["dir"] / "run_knn" / "final", device="cpu")
    rows = np.array([1, 2, 3])
    ids = pipe.neighbour_ids(rows)
    assert ids.shape == (3, 4) and (ids[:, 0] == rows).all() and not (ids[:, 1:] == rows[:, None]).any()
    c = pipe.conditioning(2, SamplingOptions(prompt=PROMPTS[:1], strategy="text+neighbours"))
    text = joint["embedder"].embed_texts(list(PROMPTS[:1]))[0]
    assert c.context.shape == (2, 4, 384)
    np.testing.assert_allclose(c.context[:, 0], np.stack([text, text]), atol=1e-6)
    np.testing.assert_array_equal(np.sort(c.ids[0, 1:]), np.sort(exact_top(pipe, text, 3)))
    images, _ = pipe.sample(2, SamplingOptions(prompt=PROMPTS[:1], strategy="text+neighbours", steps=2))
    assert images.shape == (2, 1, 32, 32)
    base = load_pipeline(joint["dir"] / "run_noknn" / "final", device="cpu")
    images, _ = base.sample(2, SamplingOptions(prompt=PROMPTS[:1], strategy="text", steps=2))
    assert images.shape == (2, 1, 32, 32)
    with pytest.raises(ConfigError, match="does not export yet"):
        from rissole_export.sources import rdm_source

        rdm_source(pipe)
