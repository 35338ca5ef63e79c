"""RISSOLE block diffusion on real latents: batches, loss, training, resume, pairing checks, sampling orders."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rissole_runtime.diffusion.schedule import DDIMSampler, NoiseSchedule
from rissole_runtime.errors import CheckpointError, ConfigError, DataError
from rissole.heads.rissole.batches import BlockBatcher
from rissole.heads.rissole.loss import BlockDiffusionLoss
from rissole.heads.rissole.sampling import sample_blocks
from rissole.retrieval.database import gather_neighbours
from rissole.heads.rissole.train import BlockDiffusionTrainer, train_block_diffusion
from rissole.heads.registry import head

build_model = head("rissole").build_model
parameter_counts = head("rissole").parameter_counts
from rissole.retrieval import build_database, open_database
from rissole_runtime.retrieval.blocks import merge_blocks
from rissole.retrieval.keys import KeySet
from rissole.retrieval.neighbours import make_tables, open_table

N_IMAGES = 512


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real latents of 512 training images through the shipped VQ-GAN, as g=2 and g=4 databases with k=5 tables."""
    from rissole.autoencoder import load_vqgan
    from rissole.checkpoint import load_checkpoint
    from rissole.data import load_source
    from rissole.latents import encode_images
    from rissole.paths import SHIPPED_VQGAN

    d = tmp_path_factory.mktemp("blockdiff")
    data = load_source("fmnist:train", limit=N_IMAGES)
    h = load_checkpoint(SHIPPED_VQGAN).weights_hash()
    encode_images(load_vqgan(SHIPPED_VQGAN), data.images, d / "lat.npy", str(SHIPPED_VQGAN), h, "fmnist:train", progress=False)
    out = {}
    for g in (2, 4):
        db = build_database(d / "lat.npy", d / f"db{g}", grid=g, progress=False)
        make_tables(db, KeySet(db, "block0"), "exact", {}, k=5, progress=False)
        out[f"g{g}"] = db.path
    return out


def tiny_config(db: Path, **model: Any) -> dict[str, Any]:
    m = {"latent_channels": 10, "latent_size": 8, "grid": 2, "k": 4, "model_channels": 32, "channel_mult": [1, 2],
         "num_res_blocks": 1, "attention": True, "num_heads": 2, "prediction": "eps", **model}
    return {
        "model": m,
        "data": {"db": str(db), "table": "train"},
        "train": {"steps": 60, "batch_size": 16, "lr": 1e-3, "warmup_steps": 5, "ema_decay": 0.9, "ckpt_every": 1000,
                  "seed": 5},
    }


def test_batches_hold_the_rows_and_their_neighbours_same_position_blocks(dbs: dict[str, Path]) -> None:
    db = open_database(dbs["g2"])
    table = open_table(db, "train")
    bt = BlockBatcher(db, table, grid=2, k=4, scale=2.0)
    ids = np.array([3, 100, 7])
    batch = bt.batch(ids)
    assert batch.x0.shape == (12, 10, 4, 4) and batch.neighbours.shape == (12, 4, 10, 4, 4)
    own = db.blocks(ids)  # (3, 4, c, s, s)
    nbr = db.blocks(np.asarray(table.ids[ids, :4]))  # (3, k, b, c, s, s)
    for j, row in enumerate(ids):
        for i in range(4):
            np.testing.assert_allclose(batch.x0[j * 4 + i].numpy(), 2.0 * own[j, i])
            for n in range(4):
                np.testing.assert_allclose(batch.neighbours[j * 4 + i, n].numpy(), 2.0 * nbr[j, n, i])
            expect_prev = np.zeros_like(own[j, 0]) if i == 0 else 2.0 * own[j, i - 1]
            np.testing.assert_allclose(batch.previous[j * 4 + i].numpy(), expect_prev)
    assert batch.positions.tolist() == [0, 1, 2, 3] * 3
    assert not (np.asarray(table.ids[ids]) == ids[:, None]).any()  # training neighbours exclude the row itself
    with pytest.raises(DataError, match="k = 9"):
        BlockBatcher(db, table, grid=2, k=9, scale=1.0)
    # without retrieval (the LDM baseline) rows are re-cut at the model's grid and no neighbours are read
    ldm = BlockBatcher(db, None, grid=1, k=4, scale=2.0).batch(ids)
    assert ldm.neighbours is None and ldm.x0.shape == (3, 10, 8, 8)
    np.testing.assert_allclose(ldm.x0.numpy(), 2.0 * merge_blocks(own, 2))


def test_cond_dropout_zeroes_exactly_the_chosen_images() -> None:
    loss = BlockDiffusionLoss(NoiseSchedule(), cond_dropout=0.5)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    drop = loss.dropped(1000, g1)
    assert 0.4 < drop.float().mean() < 0.6
    torch.testing.assert_close(loss.dropped(1000, g2), drop)

    seen: dict[str, torch.Tensor] = {}

    class Spy(torch.nn.Module):
        config = build_model(tiny_config(Path("."))["model"]).config

        def forward(self, x, t, neighbours, position, previous):  # noqa: ANN001
            seen["neighbours"], seen["t"] = neighbours, t
            return torch.zeros_like(x)

    from rissole.heads.rissole.batches import BlockBatch

    b = BlockBatch(torch.randn(8, 10, 4, 4), torch.ones(8, 4, 10, 4, 4), torch.arange(4).repeat(2), torch.zeros(8, 10, 4, 4), 2)
    gen = torch.Generator().manual_seed(3)
    loss(Spy(), b, gen)
    state = torch.Generator().manual_seed(3)
    torch.randint(0, 1000, (8,), generator=state)
    torch.randn((8, 10, 4, 4), generator=state)
    chosen = loss.dropped(2, state).repeat_interleave(4)
    zeroed = (seen["neighbours"].flatten(1) == 0).all(1)
    torch.testing.assert_close(zeroed, chosen)
    assert len(set(seen["t"].tolist())) > 1, "every block draws its own timestep"


def test_loss_goes_down_and_layernorm_is_trained(dbs: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(dbs["g2"])
    trainer = BlockDiffusionTrainer(cfg, tmp_path)
    ln0 = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("input_norm.")}
    assert set(ln0) == {"input_norm.weight", "input_norm.bias"}
    losses = [trainer.train_step()["loss"] for _ in range(60)]
    assert np.mean(losses[-15:]) < 0.7 * np.mean(losses[:15]), (np.mean(losses[:15]), np.mean(losses[-15:]))
    for k, v in ln0.items():
        assert not torch.equal(trainer.model.state_dict()[k], v), f"{k} did not change with training"


def test_resume_matches_uninterrupted_run(dbs: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(dbs["g2"])
    cfg["train"]["steps"] = 12
    full = train_block_diffusion(copy.deepcopy(cfg), tmp_path / "a", progress=False)
    train_block_diffusion(copy.deepcopy(cfg), tmp_path / "b", stop_after=5, progress=False)
    resumed = train_block_diffusion(copy.deepcopy(cfg), tmp_path / "b", resume=True, progress=False)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)
    assert (tmp_path / "a/log.csv").read_text() .count("\n") == (tmp_path / "b/log.csv").read_text().count("\n") == 13
    with pytest.raises(CheckpointError, match="--resume"):
        train_block_diffusion(copy.deepcopy(cfg), tmp_path / "a", progress=False)


def test_mismatched_database_and_budget_refused(dbs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="grid 4"):
        BlockDiffusionTrainer(tiny_config(dbs["g4"]), tmp_path)
    with pytest.raises(DataError, match="block0 keys, the config expects latent"):
        BlockDiffusionTrainer(tiny_config(dbs["g2"], key="latent"), tmp_path)
    other_vq = tiny_config(dbs["g2"])
    other_vq["vqgan_hash"] = "f" * 64
    with pytest.raises(DataError, match="VQ-GAN"):
        BlockDiffusionTrainer(other_vq, tmp_path)
    big = tiny_config(dbs["g2"])
    big["train"]["max_params"] = 1000
    with pytest.raises(ConfigError, match="max_params") as err:
        BlockDiffusionTrainer(big, tmp_path)
    assert "embed_neighbours" in str(err.value)  # per-component counts in the message


def test_parameter_count_ignores_unused_modules() -> None:
    cfg = tiny_config(Path("."))["model"]
    with_rag, without = build_model(cfg), build_model({**cfg, "retrieval": False})
    c_with, c_without = parameter_counts(with_rag), parameter_counts(without)
    assert c_with["total"] - c_without["total"] == c_with["embed_neighbours"]
    with_rag.unused = torch.nn.Linear(1000, 1000)  # a dead module: built, never called
    assert parameter_counts(with_rag)["total"] == c_with["total"]


def test_parallel_sampling_equals_block_by_block_and_guidance(dbs: dict[str, Path]) -> None:
    db = open_database(dbs["g2"])
    torch.manual_seed(0)
    model = build_model(tiny_config(dbs["g2"])["model"]).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    nb = torch.from_numpy(gather_neighbours(db, open_table(db, "database").ids[:3], 4))
    sampler = DDIMSampler(NoiseSchedule(), 8, eta=0.0)
    par = sample_blocks(model, sampler, nb, 3, torch.Generator().manual_seed(1))
    seq = sample_blocks(model, sampler, nb, 3, torch.Generator().manual_seed(1), order="block_by_block")
    assert par.shape == (3, 10, 8, 8)
    torch.testing.assert_close(par, seq, rtol=0, atol=1e-3)
    g1 = sample_blocks(model, sampler, nb, 3, torch.Generator().manual_seed(1), guidance=1.0)
    torch.testing.assert_close(g1, par)
    g2 = sample_blocks(model, sampler, nb, 3, torch.Generator().manual_seed(1), guidance=3.0)
    assert (g2 - par).abs().max() > 1e-3
    rag = build_model({**tiny_config(dbs["g2"])["model"], "retrieval": False}).eval()
    assert sample_blocks(rag, sampler, None, 2, torch.Generator().manual_seed(1)).shape == (2, 10, 8, 8)
    with pytest.raises(ValueError, match="neighbours"):
        sample_blocks(model, sampler, None, 2, torch.Generator().manual_seed(1))


def test_sample_cli_writes_grids_and_is_reproducible(dbs: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    from rissole.cli.main import main

    cfg = tiny_config(dbs["g2"])
    cfg["train"]["steps"] = 3
    train_block_diffusion(cfg, tmp_path / "run", progress=False)
    assert main(["checkpoint", "slim", str(tmp_path / "run/final"), "--out", str(tmp_path / "slim"), "--half"]) == 0
    common = ["sample", "--ckpt", str(tmp_path / "slim"), "-n", "6", "--steps", "4", "--seed", "3"]
    assert main([*common, "--out", str(tmp_path / "a.png"), "--npy", str(tmp_path / "a.npy"),
                 "--show-retrieval", str(tmp_path / "fig.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "b.png"), "--npy", str(tmp_path / "b.npy"), "--order", "block_by_block"]) == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (6, 1, 32, 32) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # the same samples, whichever order the blocks run in
    with Image.open(tmp_path / "fig.png") as im:
        assert im.size[0] > im.size[1]  # rows of query | 4 neighbours | sample
        fig_size = im.size
    query = tmp_path / "q.png"
    Image.fromarray(np.load(tmp_path / "a.npy")[0, 0]).save(query)
    assert main([*common, "--out", str(tmp_path / "c.png"), "--query", str(query),
                 "--show-retrieval", str(tmp_path / "fig_q.png")]) == 0
    with Image.open(tmp_path / "fig_q.png") as im:  # the user's image (cycled) stands where the pseudo-query stood
        assert im.size == fig_size
    assert main([*common, "--out", str(tmp_path / "d.png"), "--db", str(dbs["g4"])]) == 2  # grid mismatch: clear error


def test_v_prediction_is_turned_into_the_true_eps() -> None:
    from rissole.heads.rissole.sampling import _eps_fn

    sched = NoiseSchedule()
    x0, eps = torch.randn(6, 10, 4, 4), torch.randn(6, 10, 4, 4)
    for t in (0, 500, 999):
        a, s = (float(v) for v in sched.noise_coefficients(t))
        xt = a * x0 + s * eps

        class Oracle(torch.nn.Module):
            config = build_model({**tiny_config(Path("."))["model"], "prediction": "v"}).config

            def forward(self, x, tt, *rest, **feeds):  # noqa: ANN001
                return a * eps - s * x0  # the exact v the loss trains towards

        out = _eps_fn(Oracle(), sched, None, None, None)(xt, torch.full((6,), t), False)
        torch.testing.assert_close(out, eps, rtol=1e-4, atol=1e-4)
