"""RARM: causal cross-attending transformer for any k, KV-cached sampling identical to recomputation,
guidance on log-probabilities (RDM paper, Eq. 8), code indices equal the VQ-GAN's, loss falls, resume, CLI."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neighbour_data import one_thread  # noqa: F401  (autouse)
from neighbour_data import build_neighbour_data, randomise, rarm_config
from rissole.heads.rarm.codes import code_indices
from rissole.heads.rarm.sampling import pick, sample_codes
from rissole.heads.rarm.train import RARMTrainer, train_rarm
from rissole.heads.registry import head

build_model = head("rarm").build_model


@pytest.fixture(scope="module")
def nd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_neighbour_data(tmp_path_factory.mktemp("rarm"))


def model() -> torch.nn.Module:
    return randomise(build_model(rarm_config(Path("."))["model"]))


def test_shapes_for_any_k_and_causality() -> None:
    m = model()
    codes = torch.randint(0, 1024, (2, 64), generator=torch.Generator().manual_seed(0))
    inputs = m.shift_right(codes)
    assert inputs[:, 0].eq(1024).all() and torch.equal(inputs[:, 1:], codes[:, :-1])
    outs = {k: m(inputs, torch.randn(2, k, 640)) for k in (1, 3, 6)}
    assert all(o.shape == (2, 64, 1024) for o in outs.values())
    assert (outs[1] - outs[6]).abs().max() > 1e-3  # the neighbours reach the logits
    nb = torch.randn(2, 3, 640)
    changed = inputs.clone()
    changed[:, 40] = 7
    a, b = m(inputs, nb), m(changed, nb)
    torch.testing.assert_close(a[:, :40], b[:, :40])  # no position sees a later token
    assert (a[:, 40:] - b[:, 40:]).abs().max() > 1e-4


@pytest.mark.parametrize("guidance,top_k,temperature", [(1.0, 0, 1.0), (2.0, 50, 0.8)])
def test_cached_and_uncached_sampling_give_the_same_tokens(guidance: float, top_k: int, temperature: float) -> None:
    m = model()
    nb = torch.randn(3, 2, 640, generator=torch.Generator().manual_seed(1))
    cached = sample_codes(m, nb, torch.Generator().manual_seed(4), guidance, top_k, temperature, cache=True)
    uncached = sample_codes(m, nb, torch.Generator().manual_seed(4), guidance, top_k, temperature, cache=False)
    assert cached.shape == (3, 64) and cached.min() >= 0 and cached.max() < 1024
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    other = sample_codes(m, nb, torch.Generator().manual_seed(5), guidance, top_k, temperature)
    assert not torch.equal(cached, other)


def test_guidance_on_log_probabilities_against_zero_conditioning() -> None:
    m = model()
    nb = torch.randn(4, 3, 640)
    start = torch.full((4, 1), m.start_token)
    with torch.no_grad():
        lc = torch.log_softmax(m(start, nb)[:, 0], -1)
        lu = torch.log_softmax(m(start, torch.zeros_like(nb))[:, 0], -1)
    for s in (1.0, 2.5):  # top-k 1: the first token is the argmax of Eq. 8
        first = sample_codes(m, nb, torch.Generator().manual_seed(0), guidance=s, top_k=1)[:, 0]
        torch.testing.assert_close(first, (lu + s * (lc - lu)).argmax(-1))
    assert not torch.equal(lc.argmax(-1), (lu + 2.5 * (lc - lu)).argmax(-1)) or not torch.equal(lc, lu)
    logp = torch.log_softmax(torch.tensor([[0.0, 3.0, 1.0, -2.0]]), -1).repeat(2000, 1)
    drawn = pick(logp, torch.Generator().manual_seed(0), top_k=2)
    assert set(drawn.tolist()) == {1, 2} and (drawn == 1).float().mean() > 0.8  # top-2 only, in proportion


def test_code_indices_equal_the_vqgan_quantiser(nd: dict[str, Any]) -> None:
    from rissole.autoencoder import load_vqgan
    from rissole.paths import SHIPPED_VQGAN

    vq = load_vqgan(SHIPPED_VQGAN)
    z = nd["latents"][:32]
    with torch.no_grad():
        _, _, idx = vq.quantize_latent(torch.from_numpy(np.array(z)))
    codes = code_indices(z, vq.quantize.embedding.weight, chunk=10)
    np.testing.assert_array_equal(codes, idx.reshape(32, 64).numpy())


def test_loss_goes_down_on_real_latents(nd: dict[str, Any], tmp_path: Path) -> None:
    cfg = rarm_config(nd["db_b"])
    cfg["train"].update(lr=6e-3, steps=80)
    trainer = RARMTrainer(cfg, tmp_path)
    assert trainer.codes.shape == (200, 64)
    losses = [trainer.train_step()["loss"] for _ in range(80)]
    assert losses[0] > 6.5  # about log(1024) nats at the start
    assert np.mean(losses[-15:]) < np.mean(losses[:15]) - 0.3, (np.mean(losses[:15]), np.mean(losses[-15:]))


def test_resume_matches_uninterrupted_run(nd: dict[str, Any], tmp_path: Path) -> None:
    cfg = rarm_config(nd["db_b"])
    cfg["train"]["steps"] = 6
    full = train_rarm(copy.deepcopy(cfg), tmp_path / "a", progress=False)
    train_rarm(copy.deepcopy(cfg), tmp_path / "b", stop_after=2, progress=False)
    resumed = train_rarm(copy.deepcopy(cfg), tmp_path / "b", resume=True, progress=False)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)


def test_train_and_sample_cli_with_database_swap(nd: dict[str, Any], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    import yaml

    from rissole.cli.main import main
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline
    from rissole.heads.pipeline import SamplingOptions

    cfg = rarm_config(nd["db_b"])
    cfg["train"]["steps"] = 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    common = ["sample", "--ckpt", str(tmp_path / "run/final"), "-n", "3", "--top-k", "20", "--guidance", "1.5"]
    assert main([*common, "--out", str(tmp_path / "a.png"), "--npy", str(tmp_path / "a.npy")]) == 0
    assert main([*common, "--database", str(nd["db_class"]), "--out", str(tmp_path / "b.png"),
                 "--show-retrieval", str(tmp_path / "fig.png")]) == 0
    assert np.load(tmp_path / "a.npy").shape == (3, 1, 32, 32)
    capsys.readouterr()
    assert main([*common, "--steps", "4", "--order", "parallel", "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "--steps, --order are not options of a rarm model" in err and "-k, --top-k, --temperature" in err
    assert not (tmp_path / "c.png").exists()
    pipe = NeighbourHeadPipeline.load(tmp_path / "run/final", database=nd["db_class"], device="cpu")
    images, codes = pipe.generate(pipe.neighbour_ids(pipe.pseudo_queries(2)), SamplingOptions(seed=1, top_k=5))
    assert images.shape == (2, 1, 32, 32) and codes.shape == (2, 64)
