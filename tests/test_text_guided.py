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


def test_manipulated_training_pair_changes_only_the_chosen_area(joint: dict[str, Any]) -> None:
    """kNN-Diffusion's edit pairs (Sec. 3.1): outside the box the latent is the original's, inside the neighbour's;
    the area image keeps the box's pixels on white; boxes lie inside the latent, 2..5 cells a side."""
    import torch

    from rissole.data import load_source
    from rissole.heads.rdm.edit_pairs import MAX_CELLS, MIN_CELLS, area_images, box_mask, manipulate, random_boxes
    from rissole.latents import open_latents

    lat = np.asarray(open_latents(joint["dir"] / "lat.npy").array[:64])
    original, neighbour = lat[:32], lat[32:]
    boxes = random_boxes(32, 8, torch.Generator().manual_seed(0))
    y, x, h, w = boxes.T
    assert ((h >= MIN_CELLS) & (h <= MAX_CELLS) & (w >= MIN_CELLS) & (w <= MAX_CELLS)).all()
    assert ((y >= 0) & (y + h <= 8) & (x >= 0) & (x + w <= 8)).all() and len({tuple(b) for b in boxes}) > 10
    out = manipulate(original, neighbour, boxes)
    inside = np.broadcast_to(box_mask(boxes, 8) > 0.5, out.shape)
    np.testing.assert_array_equal(out[~inside], original[~inside])
    np.testing.assert_array_equal(out[inside], neighbour[inside])
    assert (inside[:, 0].sum(axis=(1, 2)) == h * w).all()
    images = load_source("fmnist:train", limit=32).images
    area = area_images(images, boxes, 4)
    px = np.broadcast_to(np.kron(box_mask(boxes, 8), np.ones((1, 1, 4, 4))) > 0.5, images.shape)
    np.testing.assert_array_equal(area[px], images[px])
    assert (area[~px] == 255).all()


@pytest.fixture(scope="module")
def edit(joint: dict[str, Any]) -> dict[str, Any]:
    """An edit model (model.edit, own_embedding, k = 0) briefly trained on the trousers' same-set table."""
    from rissole.heads.rdm.train import train_rdm

    d = joint["dir"]
    cfg = rdm_config(d / "db_trousers", embedder="joint", context_tokens=1, context_token_dim=384, k=0,
                     own_embedding=True, edit=True, embedder_params={"tower": joint["embedder"].spec.params["tower"]})
    cfg["data"].update(channels=1, image_size=32)
    cfg["train"]["steps"] = 3
    trainer = train_rdm(cfg, d / "run_edit", progress=False)
    return {"ckpt": d / "run_edit" / "final", "trainer": trainer, "config": cfg}


def test_edit_model_trains_on_pairs_and_edits_an_image(edit: dict[str, Any], joint: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    from rissole.cli.main import main
    from rissole.data import load_source
    from rissole.heads.rdm.train import train_rdm
    from rissole.heads.registry import load_pipeline
    from rissole_runtime.errors import DataError

    pairs = edit["trainer"].pairs
    import torch

    target, source, emb = pairs.batch(np.arange(4), torch.Generator().manual_seed(1))
    assert target.shape == source.shape == (4, 10, 8, 8) and emb.shape == (4, 1, 384)
    changed = (target != source).any(axis=1)  # (4, 8, 8): the box, where the neighbour differs
    assert changed.any() and not changed.all()
    pipe = load_pipeline(edit["ckpt"], device="cpu")
    images = load_source("fmnist:train", limit=2).images
    out = pipe.edit(images, "a photo of a trouser", SamplingOptions(steps=2, guidance=2.0))
    assert out.shape == (2, 1, 32, 32) and out.dtype == np.uint8
    with pytest.raises(ConfigError, match="rissole edit"):
        pipe.sample(2, SamplingOptions(steps=2))
    from rissole_export.sources import rdm_source

    with pytest.raises(ConfigError, match="does not export"):
        rdm_source(pipe)
    bad = dict(edit["config"], data={**edit["config"]["data"], "db": str(joint["dir"] / "db_b")})
    with pytest.raises(DataError, match="same-set"):
        train_rdm(bad, tmp_path / "bad", progress=False)
    Image.fromarray(images[0, 0]).save(tmp_path / "in.png")
    rc = main(["edit", str(tmp_path / "in.png"), "--prompt", "a photo of a bag", "--ckpt", str(edit["ckpt"]),
               "--steps", "2", "-n", "2", "--out", str(tmp_path / "e.png"), "--compare", str(tmp_path / "c.png")])
    assert rc == 0 and (tmp_path / "e.png").is_file() and Image.open(tmp_path / "c.png").size == (3 * 34 * 4 + 2 * 4, 34 * 4 + 2 * 4)


@pytest.fixture(scope="module")
def knn_bundle(knn: dict[str, Any], joint: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The kNN-Diffusion model with random weights (so the text and neighbours move the output) and its bundle,
    with the text encoder, and one without it."""
    import shutil

    from rissole_export.bundle_writer import ExportOptions, write_bundle
    from test_export_rdm import _randomise_checkpoint

    d = tmp_path_factory.mktemp("knn_edge")
    ckpt = d / "ckpt"
    shutil.copytree(joint["dir"] / "run_knn" / "final", ckpt)
    _randomise_checkpoint(ckpt)
    opts = ExportOptions(max_samples=4, progress=False)
    manifest = write_bundle(ckpt, d / "bundle", opts=opts)
    write_bundle(ckpt, d / "no_text", opts=ExportOptions(max_samples=4, progress=False, text_encoder=False))
    return {"ckpt": ckpt, "bundle": d / "bundle", "no_text": d / "no_text", "manifest": manifest, "report": opts.report}


def test_knn_bundle_samples_prompts_as_pytorch_does(knn_bundle: dict[str, Any]) -> None:
    """Same prompt, same rows and noise: the runtime's conditioning ids equal PyTorch's, images within one level."""
    from rissole.heads.registry import load_pipeline
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.sampler import EdgeSampler

    m = knn_bundle["manifest"]
    assert m["model"]["own_embedding"] and m["text_encoder"]["parity_max_abs"] < 1e-4
    assert any("tokenizer ids equal" in line for line in knn_bundle["report"])
    bundle = open_bundle(knn_bundle["bundle"], verify=True)
    assert bundle.neighbour_ids.shape[1] == bundle.k + 1
    edge = EdgeSampler(bundle, "cpu", threads=1)
    pipe = load_pipeline(knn_bundle["ckpt"], device="cpu")
    rows = edge.pseudo_queries(5, 1.0, 0)
    np.testing.assert_array_equal(edge.neighbours(rows)[:, 0], pipe.edb.embeddings(pipe.neighbour_ids(rows)))
    for strategy in ("text+neighbours", "text"):
        opts = SamplingOptions(prompt=PROMPTS, strategy=strategy, steps=4, guidance=2.0, seed=3)
        cond = pipe.conditioning(5, opts)
        ids, nb = edge.prompt_neighbours(list(PROMPTS), 5, strategy)
        np.testing.assert_array_equal(ids, cond.ids)
        np.testing.assert_allclose(nb[:, 0], cond.context, atol=1e-5)
        ref, _ = pipe.sample(5, opts)
        got, _ = edge.generate(5, 4, 3, guidance=2.0, prompts=list(PROMPTS), strategy=strategy)
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1 and got.std() > 5


def test_runtime_prompt_with_torch_blocked_and_without_a_text_encoder(knn_bundle: dict[str, Any], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from rissole_runtime.cli import main
    from test_runtime import run_runtime_without_torch

    res = run_runtime_without_torch(knn_bundle["bundle"], tmp_path, ("--steps", "3", "--prompt", *PROMPTS))
    assert res.returncode == 0, res.stderr
    assert "prompt 'a photo of a trouser'" in res.stdout and np.load(tmp_path / "x.npy").shape == (5, 1, 32, 32)
    out = tmp_path / "none.png"
    assert main([str(knn_bundle["no_text"]), "-n", "2", "--prompt", "a bag", "--out", str(out), "--quiet"]) == 2
    assert "no text encoder" in capsys.readouterr().err and not out.exists()


def test_knn_model_refuses_an_index_of_another_embedder(knn: dict[str, Any], joint: dict[str, Any],
                                                         tmp_path: Path) -> None:
    from rissole.embeddings import build_embedding_database, make_embedder, write_embeddings
    from rissole.heads.registry import load_pipeline
    from rissole.latents import open_latents
    from rissole_runtime.errors import DataError

    lat = joint["dir"] / "lat.npy"
    vq = make_embedder("vq", tuple(open_latents(lat).array.shape[1:]))
    write_embeddings(vq, lat, tmp_path / "v.npy", np.arange(50), progress=False)
    build_embedding_database(tmp_path / "v.npy", tmp_path / "db_vq", progress=False)
    with pytest.raises(DataError, match="vq embeddings"):
        load_pipeline(joint["dir"] / "run_knn" / "final", database=tmp_path / "db_vq", device="cpu")


def test_text_int8_bundle_is_smaller_and_checked(knn_bundle: dict[str, Any], tmp_path: Path) -> None:
    from rissole_export.bundle_writer import ExportOptions, write_bundle
    from rissole_export.text_encoder import MIN_INT8_COSINE
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.sampler import EdgeSampler

    m = write_bundle(knn_bundle["ckpt"], tmp_path / "b8", opts=ExportOptions(max_samples=4, progress=False, text_int8=True))
    te = m["text_encoder"]
    assert te["precision"].startswith("int8") and te["min_cosine_vs_pytorch"] >= MIN_INT8_COSINE
    assert te["bytes_int8"] < te["bytes_fp32"] / 3
    v8 = EdgeSampler(open_bundle(tmp_path / "b8"), "cpu", 1).text_encoder().embed(list(PROMPTS))
    v32 = EdgeSampler(open_bundle(knn_bundle["bundle"]), "cpu", 1).text_encoder().embed(list(PROMPTS))
    assert (v8 * v32).sum(1).min() >= MIN_INT8_COSINE
