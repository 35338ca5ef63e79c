"""RDM: cross-attention shapes for any k, guidance against zero conditioning, disjoint / same-set training
rows, database swap, embedding mismatch refused, loss falls on real latents, bit-exact resume, CLI."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neighbour_data import one_thread  # noqa: F401  (autouse)
from neighbour_data import HALF, N_IMAGES, build_neighbour_data, randomise, rdm_config
from rissole_runtime.diffusion.schedule import DDIMSampler, NoiseSchedule, guide
from rissole.embeddings import open_embedding_database
from rissole_runtime.errors import CheckpointError, ConfigError, DataError
from rissole.heads.neighbour_data import NeighbourBatcher
from rissole.heads.rdm.sampling import rdm_eps_fn, sample_latents
from rissole.heads.rdm.train import RDMTrainer, train_rdm
from rissole.heads.registry import head

build_model = head("rdm").build_model
parameter_counts = head("rdm").parameter_counts
from rissole.models.layers import SpatialTransformer
from rissole.retrieval.neighbours import open_table


@pytest.fixture(scope="module")
def nd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_neighbour_data(tmp_path_factory.mktemp("rdm"))


@pytest.fixture(scope="module")
def trained(nd: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = rdm_config(nd["db_b"])
    cfg["train"]["steps"] = 3
    run = tmp_path_factory.mktemp("rdm_run")
    train_rdm(cfg, run, progress=False)
    return run / "final"


def test_cross_attention_shapes_for_any_k() -> None:
    model = randomise(build_model(rdm_config(Path("."))["model"]))
    x, t = torch.randn(2, 10, 8, 8), torch.tensor([5, 900])
    outs = {}
    for k in (1, 3, 7):
        nb = torch.randn(2, k, 640)
        assert model.context(nb).shape == (2, k * 64, 16)
        outs[k] = model(x, t, nb)
        assert outs[k].shape == (2, 10, 8, 8)
    assert (outs[1] - outs[7]).abs().max() > 1e-4  # the neighbours reach the output
    st = SpatialTransformer(32, context_dim=16, num_heads=4)
    assert st(torch.randn(3, 32, 4, 4), torch.randn(3, 11, 16)).shape == (3, 32, 4, 4)
    with pytest.raises(ValueError, match="d = 2048"):
        model(x, t, torch.randn(2, 3, 2048))
    with pytest.raises(ConfigError, match="attention_resolutions"):
        build_model({**rdm_config(Path("."))["model"], "attention_resolutions": [4]})


def test_zero_conditioning_and_guidance_scale_one_is_the_conditional_prediction() -> None:
    model = randomise(build_model(rdm_config(Path("."))["model"]))
    sched = NoiseSchedule()
    nb, x, t = torch.randn(3, 3, 640), torch.randn(3, 10, 8, 8), torch.full((3,), 400)
    eps = rdm_eps_fn(model, sched, nb)
    with torch.no_grad():
        cond, uncond = eps(x, t, True)  # one call, batch doubled with zero embeddings
        torch.testing.assert_close(cond, eps(x, t, False), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(uncond, model(x, t, torch.zeros_like(nb)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guide(cond, uncond, 1.0), cond)
    assert (guide(cond, uncond, 2.0) - cond).abs().max() > 1e-4
    sampler = DDIMSampler(sched, 6)
    a = sample_latents(model, sampler, nb, torch.Generator().manual_seed(1), guidance=1.0)
    b = sample_latents(model, sampler, nb, torch.Generator().manual_seed(1), guidance=1.0)
    c = sample_latents(model, sampler, nb, torch.Generator().manual_seed(1), guidance=3.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == (3, 10, 8, 8) and (a - c).abs().max() > 1e-3


def test_training_rows_follow_the_table(nd: dict[str, Any]) -> None:
    spec = build_model(rdm_config(Path("."))["model"]).config.embedding_spec()
    edb = open_embedding_database(nd["db_b"])
    disjoint = NeighbourBatcher(edb, open_table(edb.db, "train"), spec, 3, "test")
    np.testing.assert_array_equal(disjoint.rows, np.arange(HALF))  # the training half, not the database rows
    ids = np.array([0, 17, 150])
    np.testing.assert_allclose(disjoint.latents(ids), nd["latents"][ids])
    table = np.asarray(open_table(edb.db, "train").ids)
    np.testing.assert_allclose(disjoint.neighbours(ids).numpy(), edb.embeddings(table[ids, :3]))
    same_db = open_embedding_database(nd["db_same"])
    same = NeighbourBatcher(same_db, open_table(same_db.db, "train"), spec, 3, "test")
    np.testing.assert_array_equal(same.rows, np.arange(N_IMAGES))
    with pytest.raises(DataError, match="copy its input"):  # a same-set table that lists each row itself
        NeighbourBatcher(same_db, open_table(same_db.db, "database"), spec, 3, "test")
    with pytest.raises(DataError, match="k = 9"):
        NeighbourBatcher(edb, open_table(edb.db, "train"), spec, 9, "test")


def test_database_swap_changes_the_neighbours_used(nd: dict[str, Any], trained: Path) -> None:
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline
    from rissole.heads.pipeline import SamplingOptions

    own = NeighbourHeadPipeline.load(trained, device="cpu")
    swap = NeighbourHeadPipeline.load(trained, database=nd["db_class"], device="cpu")
    randomise(own.model), randomise(swap.model)  # the same weights; 3 training steps leave the conditioning silent
    rows_own, rows_swap = own.pseudo_queries(8, seed=0), swap.pseudo_queries(8, seed=0)
    ids_own, ids_swap = own.neighbour_ids(rows_own), swap.neighbour_ids(rows_swap)
    emb_own, emb_swap = own.neighbour_embeddings(ids_own), swap.neighbour_embeddings(ids_swap)
    # the vectors the head reads are the swapped database's rows, all of the one class it holds
    np.testing.assert_allclose(emb_swap.numpy(), open_embedding_database(nd["db_class"]).embeddings(ids_swap))
    assert (swap.edb.db.labels()[ids_swap] == nd["class"]).all()
    assert not (own.edb.db.labels()[ids_own] == nd["class"]).all()
    assert not torch.allclose(emb_own, emb_swap)
    img_own, _ = own.generate(ids_own, SamplingOptions(seed=0, steps=4))
    img_swap, _ = swap.generate(ids_swap, SamplingOptions(seed=0, steps=4))
    assert img_own.shape == (8, 1, 32, 32) and img_own.dtype == np.uint8
    assert (img_own != img_swap).any()


def test_database_of_another_embedding_is_refused(nd: dict[str, Any], trained: Path, tmp_path: Path) -> None:
    from rissole.embeddings import build_embedding_database, make_embedder, write_embeddings
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline

    write_embeddings(make_embedder("inception", size=75), nd["dir"] / "lat.npy", tmp_path / "inc.npy", np.arange(20),
                     progress=False)
    build_embedding_database(tmp_path / "inc.npy", tmp_path / "db_inc", progress=False)
    with pytest.raises(DataError, match=r"d = 2048.*conditions on vq .*d = 640.*rissole embed") as err:
        NeighbourHeadPipeline.load(trained, database=tmp_path / "db_inc", device="cpu")
    assert str(tmp_path / "db_inc") in str(err.value)
    with pytest.raises(DataError, match="d = 640"):
        RDMTrainer(rdm_config(nd["db_b"], context_tokens=1, context_token_dim=640), tmp_path / "run")
    with pytest.raises(DataError, match="not of neighbour embeddings"):  # a RISSOLE block database
        RDMTrainer(rdm_config(_block_db(nd, tmp_path)), tmp_path / "run2")


def _block_db(nd: dict[str, Any], tmp_path: Path) -> Path:
    from rissole.retrieval import build_database

    return build_database(nd["dir"] / "lat.npy", tmp_path / "blocks", grid=2, progress=False).path


def test_loss_goes_down_on_real_latents(nd: dict[str, Any], tmp_path: Path) -> None:
    trainer = RDMTrainer(rdm_config(nd["db_b"]), tmp_path)
    losses = [trainer.train_step()["loss"] for _ in range(60)]
    assert np.mean(losses[-15:]) < 0.8 * np.mean(losses[:15]), (np.mean(losses[:15]), np.mean(losses[-15:]))
    counts = parameter_counts(trainer.model)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total") and counts["context"] > 0


def test_resume_matches_uninterrupted_run(nd: dict[str, Any], tmp_path: Path) -> None:
    cfg = rdm_config(nd["db_b"])
    cfg["train"]["steps"] = 8
    full = train_rdm(copy.deepcopy(cfg), tmp_path / "a", progress=False)
    train_rdm(copy.deepcopy(cfg), tmp_path / "b", stop_after=3, progress=False)
    resumed = train_rdm(copy.deepcopy(cfg), tmp_path / "b", resume=True, progress=False)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="--resume"):
        train_rdm(copy.deepcopy(cfg), tmp_path / "a", progress=False)


def test_train_and_sample_cli(nd: dict[str, Any], tmp_path: Path) -> None:
    import yaml
    from PIL import Image

    from rissole.cli.main import main

    cfg = rdm_config(nd["db_b"])
    cfg["train"]["steps"] = 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    common = ["sample", "--ckpt", str(tmp_path / "run/final"), "-n", "4", "--steps", "3", "--guidance", "2"]
    assert main([*common, "--out", str(tmp_path / "a.png"), "--npy", str(tmp_path / "a.npy"),
                 "--show-retrieval", str(tmp_path / "fig.png")]) == 0
    assert main([*common, "--database", str(nd["db_class"]), "--out", str(tmp_path / "b.png"), "-k", "5"]) == 0
    assert np.load(tmp_path / "a.npy").shape == (4, 1, 32, 32)
    assert Image.open(tmp_path / "fig.png").size[0] > Image.open(tmp_path / "a.png").size[0]
    assert main([*common, "--database", str(nd["db_class"]), "--out", str(tmp_path / "c.png"), "-k", "9"]) == 2
