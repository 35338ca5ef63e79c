"""rissole-export and rissole-run for the RDM and RARM heads: a tiny v-predicting RDM and a tiny RARM trained here
on real Fashion-MNIST latents (the data of tests/neighbour_data.py), their bundles (onnx.checker, onnxruntime vs
PyTorch, fp16 with fp32 norm layers, the embedding database hard-linked), sampling with torch blocked, parity
with NeighbourHeadPipeline (RDM: pixels; RARM: the drawn codes), and refusals (a truncated embedding database or
codebook, an embedding manifest of another d, a corrupt table under --verify, DDIM options for an RARM bundle)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from neighbour_data import one_thread  # noqa: F401  (autouse)
from neighbour_data import build_neighbour_data, randomise, rarm_config, rdm_config
from rissole.heads.pipeline import SamplingOptions
from rissole_runtime.diffusion.schedule import NoiseSchedule
from rissole_runtime.errors import DataError
from rissole_export.bundle_writer import ExportOptions, bundle_size, write_bundle
from rissole_export.parity import cpu_session
from rissole_runtime.bundle import CODEBOOK, CONTEXT, DB_DIR, DECODER, DENOISER, MANIFEST, STEP, open_bundle
from rissole_runtime.sampler import EdgeSampler, open_sampler
from test_runtime import run_runtime_without_torch

MAX_SAMPLES = 4
K = 3


def _randomise_checkpoint(ckpt: Path) -> None:
    """Random weights everywhere (also the zero-initialised output conv), so the neighbours and guidance move the
    output: a few training steps leave the conditioning silent, and a silent model makes parity trivial."""
    from rissole.checkpoint import load_checkpoint, save_checkpoint
    from rissole.heads.registry import head
    from rissole.training import run_config

    c = load_checkpoint(ckpt)
    model = randomise(head(c.kind).build_model(c.config["model"]), seed=3)
    rest = run_config(c.config)
    state = model.state_dict()
    save_checkpoint(ckpt, c.kind, c.step, rest, {"model": state, "ema": state})


@pytest.fixture(scope="module")
def rdm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real latents -> disjoint vq embedding database with exact tables -> RDM (v, k = 3) -> its bundle."""
    from rissole.heads.rdm.train import train_rdm

    d = tmp_path_factory.mktemp("rdm_edge")
    nd = build_neighbour_data(d)
    cfg = rdm_config(nd["db_b"], prediction="v", k=K)
    cfg["train"]["steps"] = 3
    train_rdm(cfg, d / "run", progress=False)
    ckpt = d / "run" / "final"
    _randomise_checkpoint(ckpt)
    opts = ExportOptions(max_samples=MAX_SAMPLES, steps=6, progress=False)
    manifest = write_bundle(ckpt, d / "bundle", opts=opts)
    return {**nd, "ckpt": ckpt, "bundle": d / "bundle", "manifest": manifest, "report": opts.report}


def test_rdm_bundle_passes_the_checker_and_matches_pytorch(rdm: dict[str, Any]) -> None:
    """Measured: ORT vs torch max abs 3.3e-6 on real latents (tolerance 1e-4; 5.3e-6 for the smoke run), and
    below 1e-4 on fresh inputs at 3 batch sizes against the PyTorch sampler's eps function."""
    from rissole.embeddings import make_embedder
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline
    from rissole.heads.rdm.sampling import rdm_eps_fn
    from rissole_export.trtexec import engine_plans, trtexec_command

    bundle, m = rdm["bundle"], rdm["manifest"]
    assert any(line.startswith("rdm denoiser: onnx.checker ok") for line in rdm["report"])
    model = m["model"]
    assert (model["kind"], model["grid"], model["num_blocks"], model["k"], model["prediction"]) == ("rdm", 1, 1, K, "v")
    assert model["latent_shape"] == model["block_shape"] == [10, 8, 8] and model["embedding"]["dim"] == 640
    assert m["denoiser"]["output_is"] == "eps" and "sqrt(abar[t])" in m["denoiser"]["eps_conversion"]
    assert "all-zero neighbour embeddings" in m["denoiser"]["guidance"]
    assert m["denoiser"]["inputs"]["neighbours"]["shape"] == ["batch", "vectors", 640]  # a prompt may give fewer
    assert m["sampler"]["timesteps"][0] == 999 and len(m["sampler"]["timesteps"]) == 6
    assert m["batch"] == {"max_samples": MAX_SAMPLES, "min": 1, "opt": MAX_SAMPLES, "max": 2 * MAX_SAMPLES}
    assert m["denoiser"]["parity_max_abs"] <= 1e-4 and m["decoder"]["parity_max_abs"] <= 1e-4
    assert sorted(p.name for p in bundle.iterdir() if p.is_file()) == [DECODER, DENOISER, MANIFEST, "proposal.npy"]
    # the embedding database ships as it is: hard-linked (memmapped on the device), the table cut to k columns
    assert os.path.samefile(bundle / DB_DIR / "blocks.npy", rdm["db_b"] / "blocks.npy")
    assert bundle_size(bundle) < 5 * 2**20
    for name in (DENOISER, DECODER):
        onnx_model = onnx.load(str(bundle / name))
        onnx.checker.check_model(onnx_model, full_check=True)
        assert onnx_model.opset_import[0].version >= 17
        assert onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    # fresh real inputs, three batch sizes (dynamic axis), against the PyTorch sampler's own eps function;
    # the runtime gathers the same embedding rows as EmbeddingDatabase.embeddings (bit for bit)
    pipe = NeighbourHeadPipeline.load(rdm["ckpt"], device="cpu")
    edge = EdgeSampler(open_bundle(bundle), "cpu", threads=1)
    sess = cpu_session(bundle / DENOISER)
    schedule = NoiseSchedule.from_dict(pipe.config["diffusion"])
    vq_embedder = make_embedder("vq", (10, 8, 8))
    rng = np.random.default_rng(11)
    worst = 0.0
    for n, t in ((1, 999), (3, 500), (2, 20)):
        rows = rng.choice(len(pipe.edb), n, replace=False)
        nb = edge.neighbours(rows)[:, 0]
        ids = pipe.neighbour_ids(rows)
        np.testing.assert_array_equal(nb, pipe.neighbour_embeddings(ids).numpy())
        # ... which are the vq embeddings of the neighbours' own latents (what the bundle ships instead of latents)
        vq = vq_embedder.embed_latents(rdm["latents"][pipe.edb.rows[ids].ravel()]).reshape(nb.shape)
        np.testing.assert_allclose(nb, vq, rtol=0, atol=1e-6)
        x = rng.standard_normal((n, 10, 8, 8)).astype(np.float32)
        got = sess.run(None, {"x": x, "t": np.full(n, t), "neighbours": nb})[0]
        with torch.no_grad():
            ref = rdm_eps_fn(pipe.model, schedule, torch.from_numpy(nb))(torch.from_numpy(x), torch.full((n,), t),
                                                                          False).numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst < 1e-4, worst

    den = trtexec_command(engine_plans(bundle, m, fp16=True)[0])
    assert f"--maxShapes=x:{2 * MAX_SAMPLES}x10x8x8,t:{2 * MAX_SAMPLES},neighbours:{2 * MAX_SAMPLES}x{K}x640" in den
    assert "--minShapes=x:1x10x8x8,t:1,neighbours:1x1x640" in den  # the free neighbour axis: 1 (a text alone) .. k
    assert "/model/context/norm/LayerNormalization:fp32" in " ".join(den)


def test_rdm_fp16_export_keeps_norm_layers_fp32(rdm: dict[str, Any], tmp_path: Path) -> None:
    """Measured: fp16 ORT vs fp32 torch max abs 2.7e-3 for the tiny RDM (tolerance 2e-2); 4.9e-3 on the smoke run."""
    from onnx import TensorProto

    opts = ExportOptions(fp16=True, max_samples=MAX_SAMPLES, steps=6, progress=False)
    m = write_bundle(rdm["ckpt"], tmp_path / "half", opts=opts)
    assert m["denoiser"]["precision"] == "fp16" and 0 < m["denoiser"]["parity_max_abs"] <= 2e-2
    assert "/model/context/norm/LayerNormalization" in m["denoiser"]["fp32_nodes"]
    half = onnx.load(str(tmp_path / "half" / DENOISER))
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TensorProto.FLOAT, TensorProto.INT64,
                                                                        TensorProto.FLOAT]
    assert m["denoiser"]["weights_by_dtype"].get("float16", 0) > m["denoiser"]["weights_by_dtype"].get("float", 0)
    images, _ = EdgeSampler(open_bundle(tmp_path / "half"), "cpu", 1).generate(2, 3, guidance=2.0)
    assert images.shape == (2, 1, 32, 32)


def test_rdm_runtime_samples_with_torch_blocked(rdm: dict[str, Any], tmp_path: Path) -> None:
    res = run_runtime_without_torch(rdm["bundle"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "rdm, grid 1, k 3" in res.stdout and "verified" in res.stdout and "(8 calls)" in res.stdout
    images = np.load(tmp_path / "x.npy")
    assert images.shape == (5, 1, 32, 32) and images.dtype == np.uint8 and images.std() > 5
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] > 64


def test_rdm_runtime_images_match_the_pytorch_pipeline_within_one_level(rdm: dict[str, Any]) -> None:
    """Same pseudo-query rows (same seed), same x_T, DDIM-6: measured max abs pixel diff 0 unguided and 1 uint8
    level at guidance 2.5 (1 pixel of 6,144); latents within 5e-6. Asserted: the decoders within 1 level on the same
    latents, >= 99 % of codes equal, latents within 1e-4. (Smoke run, DDIM-50, 16 images: max 1 level, latents within 1.2e-6.)"""
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline

    edge = EdgeSampler(open_bundle(rdm["bundle"]), "cpu", threads=1)
    pipe = NeighbourHeadPipeline.load(rdm["ckpt"], device="cpu")
    n = 6  # two network calls of max_samples = 4 in the runtime, one in PyTorch
    for seed, guidance, top_m in ((0, 1.0, 1.0), (3, 2.5, 0.3)):
        rows = edge.pseudo_queries(n, top_m, seed)
        np.testing.assert_array_equal(rows, pipe.pseudo_queries(n, top_m, seed))
        x_T = edge.initial_noise(n, seed)
        assert x_T.shape == (n, 1, 10, 8, 8)
        lat = edge.sample_latents(edge.neighbours(rows), x_T, edge.sampler(6), guidance)
        images = edge.decode(lat)
        ref, ref_lat = pipe.generate(pipe.neighbour_ids(rows), SamplingOptions(seed=seed, guidance=guidance, steps=6),
                                     x_T=torch.from_numpy(x_T[:, 0]))
        assert np.abs(lat - ref_lat.numpy()).max() < 1e-4
        # decode quantises: a latent within 1e-4 of a tie between two codes may pick the other one (seen with
        # first stage B: one flipped code, 12 levels in its 4 x 4 pixels), so the decoders are compared on the same
        # latents, and the sampled ones by their codes
        assert np.abs(edge.decode(ref_lat.numpy()).astype(int) - ref.astype(int)).max() <= 1
        codes = [pipe.vqgan.quantize_latent(torch.from_numpy(np.asarray(x, np.float32)))[2] for x in (lat, ref_lat.numpy())]
        assert (codes[0] == codes[1]).float().mean() > 0.99  # a flipped code changes its whole receptive field
        assert images.std() > 5
        full, _ = edge.generate(n, 6, seed, top_m, guidance)
        np.testing.assert_array_equal(full, images)  # generate() = these steps


@pytest.fixture(scope="module")
def rarm(rdm: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An RARM (k = 3) on the RDM's embedding database, randomised, and its bundle (default top-k 50, T 0.9)."""
    from rissole.heads.rarm.train import train_rarm

    d = tmp_path_factory.mktemp("rarm_edge")
    cfg = rarm_config(rdm["db_b"], k=K)
    cfg["train"]["steps"] = 2
    train_rarm(cfg, d / "run", progress=False)
    ckpt = d / "run" / "final"
    _randomise_checkpoint(ckpt)
    opts = ExportOptions(max_samples=MAX_SAMPLES, top_k=50, temperature=0.9, progress=False)
    manifest = write_bundle(ckpt, d / "bundle", opts=opts)
    return {"ckpt": ckpt, "bundle": d / "bundle", "manifest": manifest, "report": opts.report}


def test_rarm_bundle_passes_the_checker_and_matches_pytorch(rdm: dict[str, Any], rarm: dict[str, Any]) -> None:
    """Context and step graphs checked at export (step: every position of real codes, teacher-forced); the
    codebook is the VQ-GAN's, and codes -> codebook -> decoder.onnx gives the PyTorch decode_code images."""
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline
    from rissole_export.trtexec import engine_plans, trtexec_command
    from rissole_runtime.token_sampler import codes_to_latents

    bundle, m = rarm["bundle"], rarm["manifest"]
    assert any(line.startswith("rarm context: onnx.checker ok") for line in rarm["report"])
    assert any(line.startswith("rarm step: onnx.checker ok") and "64 positions" in line for line in rarm["report"])
    model = m["model"]
    assert (model["kind"], model["k"], model["seq_len"], model["vocab_size"], model["start_token"]) == \
        ("rarm", K, 64, 1024, 1024)
    assert m["sampler"] == {"kind": "tokens", "num_steps": 64, "top_k": 50, "temperature": 0.9}
    assert m["schedule"] is None and "denoiser" not in m
    assert m["context"]["parity_max_abs"] <= 1e-4 and m["step"]["parity_max_abs"] <= 1e-4
    assert 0 < m["step"]["parity_max_abs"]  # a real comparison, not two copies of one output
    h, dh = model["num_heads"], model["head_dim"]
    assert list(m["step"]["inputs"])[:6] == ["token", "pos", "self_k0", "self_v0", "cross_k0", "cross_v0"]
    assert m["step"]["inputs"]["self_k1"]["shape"] == ["batch", h, dh, 64]  # keys transposed
    assert m["step"]["inputs"]["cross_v1"]["shape"] == ["batch", h, K * 64, dh]
    assert m["step"]["outputs"]["kv_new"]["shape"] == ["batch", model["depth"], 2, h, 1, dh]
    assert sorted(p.name for p in bundle.iterdir() if p.is_file()) == sorted(
        [CODEBOOK, CONTEXT, DECODER, MANIFEST, STEP, "proposal.npy"])
    assert os.path.samefile(bundle / DB_DIR / "blocks.npy", rdm["db_b"] / "blocks.npy")

    pipe = NeighbourHeadPipeline.load(rarm["ckpt"], device="cpu")
    book = np.load(bundle / CODEBOOK)
    np.testing.assert_array_equal(book, pipe.vqgan.quantize.embedding.weight.detach().numpy())
    codes = np.random.default_rng(0).integers(0, 1024, (3, 64))
    images = open_sampler(open_bundle(bundle), "cpu", 1).decode(codes_to_latents(codes, book, (10, 8, 8)))
    ref = pipe.decode_codes(torch.from_numpy(codes))
    assert np.abs(images.astype(int) - ref.astype(int)).max() <= 1 and images.std() > 5

    plans = engine_plans(bundle, m, fp16=True)
    assert [p.onnx_path.name for p in plans] == [CONTEXT, STEP, DECODER]
    step = " ".join(trtexec_command(plans[1]))
    assert f"--maxShapes=token:{2 * MAX_SAMPLES},pos:{2 * MAX_SAMPLES},self_k0:{2 * MAX_SAMPLES}x{h}x{dh}x64," in step


@pytest.mark.parametrize("seed,guidance,top_k,temperature", [(0, 1.0, 0, 1.0), (3, 2.0, 50, 0.9)])
def test_rarm_runtime_draws_the_codes_pytorch_draws(rarm: dict[str, Any], seed: int, guidance: float, top_k: int,
                                                     temperature: float) -> None:
    """Same pseudo-query rows, same uniforms (PyTorch's generator stream fed to the runtime): the runtime's
    KV-cached ONNX loop draws exactly NeighbourHeadPipeline's codes, and the images agree within one level."""
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline

    edge = open_sampler(open_bundle(rarm["bundle"]), "cpu", 1)
    pipe = NeighbourHeadPipeline.load(rarm["ckpt"], device="cpu")
    n = MAX_SAMPLES  # one chunk: PyTorch draws n uniforms per position, so does the runtime
    rows = edge.pseudo_queries(n, 1.0, seed)
    np.testing.assert_array_equal(rows, pipe.pseudo_queries(n, 1.0, seed))
    gen = torch.Generator().manual_seed(seed)
    codes = edge.sample_codes(edge.neighbours(rows)[:, 0], lambda m: torch.rand(m, generator=gen, dtype=torch.float64)
                              .numpy(), guidance, top_k, temperature)
    ref_images, ref_codes = pipe.generate(pipe.neighbour_ids(rows), SamplingOptions(seed=seed, guidance=guidance,
                                                                                     top_k=top_k, temperature=temperature))
    np.testing.assert_array_equal(codes, ref_codes.numpy())
    assert len(np.unique(codes)) > 20  # drawn, not collapsed onto one code
    images = edge.decode(edge.latents(codes))
    assert np.abs(images.astype(int) - ref_images.astype(int)).max() <= 1


def test_rarm_runtime_samples_with_torch_blocked(rarm: dict[str, Any], tmp_path: Path) -> None:
    res = run_runtime_without_torch(rarm["bundle"], tmp_path, sampling=("--top-k", "20"))
    assert res.returncode == 0, res.stderr
    assert "rarm, grid 1, k 3" in res.stdout and "top-k 20, temperature 0.9" in res.stdout
    assert "(130 calls)" in res.stdout  # 5 images in chunks of 4 and 1: (1 context + 64 steps) each
    images = np.load(tmp_path / "x.npy")
    assert images.shape == (5, 1, 32, 32) and images.dtype == np.uint8 and images.std() > 5


def test_rarm_bundle_refuses_ddim_options_and_a_truncated_codebook(rarm: dict[str, Any], tmp_path: Path,
                                                                     capsys) -> None:  # noqa: ANN001
    from rissole_runtime.cli import main as run_main

    out = tmp_path / "g.png"
    assert run_main([str(rarm["bundle"]), "-n", "1", "--steps", "10", "--out", str(out), "--quiet"]) == 2
    assert "--steps and --eta are for diffusion bundles" in capsys.readouterr().err and not out.exists()
    copy = tmp_path / "bundle"
    shutil.copytree(rarm["bundle"], copy)
    (copy / CODEBOOK).write_bytes((copy / CODEBOOK).read_bytes()[:-40])
    with pytest.raises(DataError, match=r"codebook\.npy: .* the file is truncated"):
        open_bundle(copy)


@pytest.fixture
def copy(rdm: dict[str, Any], tmp_path: Path) -> Path:
    """A private copy of the bundle (the embedding database copied, not linked) to damage."""
    dest = tmp_path / "bundle"
    shutil.copytree(rdm["bundle"], dest)
    return dest


def test_rdm_bundle_parts_that_disagree_are_refused(copy: Path) -> None:
    from rissole_runtime.cli import main as run_main

    m = json.loads((copy / MANIFEST).read_text())
    bad = json.loads(json.dumps(m))
    bad["model"]["embedding"]["dim"] = 320  # the manifest of a model on another embedding
    (copy / MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"db/manifest\.json: latent_shape is \[640, 1, 1\], but .* expects "
                                        r"\[320, 1, 1\]"):
        open_bundle(copy)
    bad["model"]["kind"] = "gan"
    (copy / MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(DataError, match="kind 'gan'; this runtime samples rissole, rdm, rarm bundles"):
        open_bundle(copy)
    (copy / MANIFEST).write_text(json.dumps(m))
    ids = copy / DB_DIR / "neighbours" / "database.ids.npy"
    data = bytearray(ids.read_bytes())
    data[-4] ^= 0x01  # same size, the last neighbour id moved by one (int32, little-endian)
    ids.write_bytes(bytes(data))
    open_bundle(copy)  # fast mode: sizes and manifests
    with pytest.raises(DataError, match=r"database\.ids\.npy: sha256 .* corrupt"):
        open_bundle(copy, verify=True)
    blocks = copy / DB_DIR / "blocks.npy"
    blocks.write_bytes(blocks.read_bytes()[:-640 * 4])  # one embedding row short
    assert run_main([str(copy), "-n", "1", "--steps", "1", "--out", str(copy / "g.png"), "--quiet"]) == 2
    with pytest.raises(DataError, match=r"db/blocks\.npy.*truncated"):
        open_bundle(copy)
