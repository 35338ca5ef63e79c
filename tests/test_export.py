"""rissole-export on a tiny RISSOLE model trained here on real Fashion-MNIST latents: ONNX checker,
onnxruntime vs PyTorch, fp16 with fp32 norm layers, the bundle manifest, TensorRT plans and trtexec."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from rissole_export.bundle_writer import ExportOptions, bundle_size, write_bundle
from rissole_export.fp16 import convert_to_fp16
from rissole_export.graphs import EpsDenoiserGraph
from rissole_export.onnx_io import NORM_OPS, fp32_nodes
from rissole_export.parity import ParityError, check_parity, cpu_session
from rissole_export.tensorrt_build import TensorRTUnavailable, build_engines, import_tensorrt
from rissole_export.trtexec import engine_plans, trtexec_command
from rissole_runtime.bundle import DECODER, DENOISER, MANIFEST

ROOT = Path(__file__).resolve().parent.parent
N_IMAGES = 128
MAX_SAMPLES = 4


@functools.lru_cache(maxsize=None)
def tiny_export(base: Path) -> dict[str, Path]:
    """Once per test session: 128 real latents -> g=2 database with k=5 tables -> a v-model trained
    for 12 steps -> its bundle. Shared by test_runtime.py (same session temp dir)."""
    from rissole.autoencoder import load_vqgan
    from rissole.checkpoint import load_checkpoint
    from rissole.data import load_source
    from rissole.heads.rissole.train import train_block_diffusion
    from rissole.latents import encode_images
    from rissole.paths import SHIPPED_VQGAN
    from rissole.retrieval import build_database
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import make_tables

    d = base / "edge"
    d.mkdir(exist_ok=True)
    data = load_source("fmnist:train", limit=N_IMAGES)
    h = load_checkpoint(SHIPPED_VQGAN).weights_hash()
    encode_images(load_vqgan(SHIPPED_VQGAN), data.images, d / "lat.npy", str(SHIPPED_VQGAN), h, "fmnist:train", progress=False)
    db = build_database(d / "lat.npy", d / "db", grid=2, progress=False)
    make_tables(db, KeySet(db, "block0"), "exact", {}, k=5, progress=False)
    cfg = {
        "model": {"latent_channels": 10, "latent_size": 8, "grid": 2, "k": 4, "model_channels": 32,
                  "channel_mult": [1, 2], "num_res_blocks": 1, "attention": True, "num_heads": 2, "prediction": "v"},
        "data": {"db": str(db.path), "table": "train", "vqgan": str(SHIPPED_VQGAN)},
        "train": {"steps": 12, "batch_size": 8, "lr": 2e-3, "warmup_steps": 5, "ema_decay": 0.9, "ckpt_every": 1000,
                  "seed": 5},
    }
    train_block_diffusion(cfg, d / "run", progress=False)
    opts = ExportOptions(max_samples=MAX_SAMPLES, steps=6, progress=False)
    write_bundle(d / "run" / "final", d / "bundle", opts=opts)
    return {"ckpt": d / "run" / "final", "db": db.path, "bundle": d / "bundle", "dir": d, "report": opts.report}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_export(tmp_path_factory.getbasetemp())


def test_pyproject_lists_every_rissole_package() -> None:
    """The package list is explicit (package-dir maps export/): a new subpackage must be added."""
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(rissole[\w.]*)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rissole").rglob("__init__.py")}
    assert found - listed == set(), f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "rissole_export" in listed


def test_bundle_models_pass_the_checker_and_match_pytorch(tiny: dict[str, Path]) -> None:
    import json

    from rissole.heads.rissole.pipeline import RissolePipeline

    bundle = tiny["bundle"]
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert any("max abs diff" in line for line in tiny["report"])
    m = manifest["model"]
    assert (m["grid"], m["num_blocks"], m["k"], m["prediction"]) == (2, 4, 4, "v")
    assert manifest["denoiser"]["output_is"] == "eps" and "sqrt(abar[t])" in manifest["denoiser"]["eps_conversion"]
    assert manifest["sampler"]["timesteps"][0] == 999 and len(manifest["sampler"]["timesteps"]) == 6
    assert manifest["batch"] == {"max_samples": MAX_SAMPLES, "min": 4, "opt": 4 * MAX_SAMPLES, "max": 8 * MAX_SAMPLES}
    assert manifest["denoiser"]["parity_max_abs"] <= 1e-4 and manifest["decoder"]["parity_max_abs"] <= 1e-4
    assert sorted(p.name for p in bundle.iterdir() if p.is_file()) == [DECODER, DENOISER, MANIFEST, "proposal.npy"]
    for name in (DENOISER, DECODER):
        model = onnx.load(str(bundle / name))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version >= 17
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert bundle_size(bundle) < 50 * 2**20

    # fresh real inputs, two batch sizes (dynamic axis), against the PyTorch pipeline's own eps function
    from rissole.heads.rissole.sampling import _eps_fn
    from rissole.retrieval.database import gather_neighbours
    from rissole.retrieval.neighbours import open_table

    pipe = RissolePipeline.load(tiny["ckpt"], device="cpu")
    sess = cpu_session(bundle / DENOISER)
    scale = np.float32(pipe.config["scale_factor"])
    rng = np.random.default_rng(11)
    for n, t in ((1, 999), (3, 500), (2, 20)):
        rows = rng.choice(pipe.db.rows, n, replace=False)
        nb = gather_neighbours(pipe.db, open_table(pipe.db, "database").ids[rows], 4) * scale
        nb = nb.reshape(n * 4, 4, 10, 4, 4)
        x = rng.standard_normal((n * 4, 10, 4, 4)).astype(np.float32)
        got = sess.run(None, {"x": x, "t": np.full(n * 4, t), "neighbours": nb})[0]
        with torch.no_grad():
            ref = _eps_fn(pipe.model, pipe.schedule, torch.from_numpy(nb), None, None)(
                torch.from_numpy(x), torch.full((n * 4,), t), False).numpy()
        assert np.abs(got - ref).max() < 1e-4


def test_decoder_matches_pytorch_decode(tiny: dict[str, Path]) -> None:
    from rissole.heads.rissole.pipeline import RissolePipeline
    from rissole_runtime.retrieval.blocks import merge_blocks

    pipe = RissolePipeline.load(tiny["ckpt"], device="cpu")
    lat = merge_blocks(pipe.db.blocks(np.arange(5)), 2).astype(np.float32)
    images = cpu_session(tiny["bundle"] / DECODER).run(None, {"latents": lat})[0]
    from rissole_runtime.sampler import to_uint8

    diff = np.abs(to_uint8(images).astype(int) - pipe.decode(torch.from_numpy(lat)).astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # float rounding may cross a uint8 boundary (B: 1 of 5,120)


def test_parity_failure_stops_the_export(tiny: dict[str, Path]) -> None:
    sess_in = {"latents": np.zeros((1, 10, 8, 8), np.float32)}
    ref = cpu_session(tiny["bundle"] / DECODER).run(None, sess_in)[0]
    assert check_parity(tiny["bundle"] / DECODER, sess_in, lambda: ref, 1e-4, "decoder") == 0.0
    with pytest.raises(ParityError, match=r"differ by 0\.001.*tolerance 0\.0001"):
        check_parity(tiny["bundle"] / DECODER, sess_in, lambda: ref + 1e-3, 1e-4, "decoder")


def test_v_to_eps_in_the_graph_is_the_samplers_conversion(tiny: dict[str, Path]) -> None:
    from rissole.heads.rissole.pipeline import RissolePipeline
    from rissole.heads.rissole.sampling import _eps_fn

    pipe = RissolePipeline.load(tiny["ckpt"], device="cpu")
    graph = EpsDenoiserGraph(pipe.model, pipe.schedule)
    x, nb = torch.randn(8, 10, 4, 4), torch.randn(8, 4, 10, 4, 4)
    with torch.no_grad():
        for t in (0, 300, 999):
            tt = torch.full((8,), t)
            torch.testing.assert_close(graph(x, tt, nb), _eps_fn(pipe.model, pipe.schedule, nb, None, None)(x, tt, False))
        mixed = graph(x, torch.tensor([0, 999] * 4), nb)  # one timestep per row, as a device batch may hold
        assert not torch.allclose(mixed[0], graph(x, torch.full((8,), 999), nb)[0])


def test_fp16_keeps_normalisation_layers_in_fp32(tiny: dict[str, Path]) -> None:
    from onnx import TensorProto, shape_inference

    fp32 = onnx.load(str(tiny["bundle"] / DENOISER))
    keep = fp32_nodes(fp32, ("", "/model"))
    norms = [n for n in fp32.graph.node if n.op_type in NORM_OPS]
    assert norms and all(n.name in keep for n in norms)
    half = convert_to_fp16(fp32, keep)
    inferred = shape_inference.infer_shapes(half)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    for n in inferred.graph.node:
        if n.op_type in NORM_OPS:
            assert types[n.input[0]] == TensorProto.FLOAT, n.name  # normalisation computes in fp32
        if n.op_type == "Conv":
            assert types[n.input[1]] == TensorProto.FLOAT16, n.name  # conv weights stored in fp16
    assert [i.type.tensor_type.elem_type for i in half.graph.input if i.name == "x"] == [TensorProto.FLOAT]
    assert half.ByteSize() < 0.6 * fp32.ByteSize()
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((8, 10, 4, 4)).astype(np.float32), "t": rng.integers(0, 1000, 8),
            "neighbours": rng.standard_normal((8, 4, 10, 4, 4)).astype(np.float32)}
    a = cpu_session(tiny["bundle"] / DENOISER).run(None, feed)[0]
    path = tiny["dir"] / "half.onnx"
    path.write_bytes(half.SerializeToString())
    b = cpu_session(path).run(None, feed)[0]
    assert b.dtype == np.float32 and 0 < np.abs(a - b).max() < 2e-2


def test_int8_export_calibrates_on_database_rows_and_reports_sample_parity(tiny: dict[str, Path]) -> None:
    """--int8: a QDQ int8 denoiser calibrated on 64 real rows (of the 128-row database); the manifest carries
    the fp32-vs-int8 pixel difference of real samples; the runtime samples the bundle."""
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.sampler import EdgeSampler

    opts = ExportOptions(max_samples=4, steps=6, int8=True, int8_calibration_rows=64, progress=False)
    m = write_bundle(tiny["ckpt"], tiny["dir"] / "bundle-int8", opts=opts)
    den = m["denoiser"]
    assert den["precision"] == "int8" and "64 real denoiser inputs" not in den["int8"]["calibration"]
    assert den["int8"]["calibration"].startswith("256 real")  # 64 rows x 4 blocks
    ops = {n.op_type for n in onnx.load(str(tiny["dir"] / "bundle-int8" / DENOISER)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    p = den["sample_parity_vs_fp32"]
    assert p["images"] == 16 and 0 <= p["mean_abs_pixel_diff"] < 20 and p["max_abs_pixel_diff"] <= 255
    images, _ = EdgeSampler(open_bundle(tiny["dir"] / "bundle-int8"), "cpu", 1).generate(2, 6)
    assert images.shape == (2, 1, 32, 32) and images.std() > 5
    assert not list(tiny["dir"].glob("**/denoiser.fp32.onnx"))  # the fp32 reference is not left behind
    from rissole_export.trtexec import engine_plans, trtexec_command

    den_plan, dec_plan = engine_plans(tiny["dir"] / "bundle-int8", m, fp16=False)
    assert den_plan.int8 and "--int8" in trtexec_command(den_plan)  # TensorRT reads the Q/DQ scales
    assert not dec_plan.int8 and "--int8" not in trtexec_command(dec_plan)


def test_int8_export_refuses_a_database_without_enough_calibration_rows(tiny: dict[str, Path]) -> None:
    from rissole.errors import ConfigError, DataError

    out = tiny["dir"] / "bundle-int8-refused"
    with pytest.raises(DataError, match=r"int8 calibration needs 1000 real database rows, the database holds 128"):
        write_bundle(tiny["ckpt"], out, opts=ExportOptions(int8=True, int8_calibration_rows=1000, progress=False))
    with pytest.raises(ConfigError, match="drop --fp16"):
        write_bundle(tiny["ckpt"], out, opts=ExportOptions(int8=True, fp16=True, progress=False))
    assert not out.exists()


def test_trtexec_command_names_profile_shapes_and_fp32_layers(tiny: dict[str, Path]) -> None:
    import json

    manifest = json.loads((tiny["bundle"] / MANIFEST).read_text())
    den, dec = engine_plans(tiny["bundle"], manifest, fp16=True, workspace_mb=768)
    cmd = trtexec_command(den)
    joined = " ".join(cmd)
    lo, opt, hi = 4, 4 * MAX_SAMPLES, 8 * MAX_SAMPLES
    assert f"--minShapes=x:{lo}x10x4x4,t:{lo},neighbours:{lo}x4x10x4x4" in cmd
    assert f"--optShapes=x:{opt}x10x4x4,t:{opt},neighbours:{opt}x4x10x4x4" in cmd
    assert f"--maxShapes=x:{hi}x10x4x4,t:{hi},neighbours:{hi}x4x10x4x4" in cmd
    assert "--fp16" in cmd and "--precisionConstraints=obey" in cmd and "--memPoolSize=workspace:768M" in cmd
    assert f"--timingCacheFile={tiny['bundle'] / 'timing.cache'}" in cmd
    layers = [x for x in cmd if x.startswith("--layerPrecisions=")][0]
    assert "/model/input_norm/LayerNormalization:fp32" in layers
    assert re.search(r"/model/down\.0/norm1/InstanceNormalization:fp32", layers)
    assert "/model/Cos:fp32" in layers and "Conv:fp32" not in layers
    assert "--maxShapes=latents:4x10x8x8" in trtexec_command(dec) and "/quantize/ArgMin:fp32" in " ".join(trtexec_command(dec))
    fp32_cmd = trtexec_command(engine_plans(tiny["bundle"], manifest, fp16=False)[0])
    assert "--fp16" not in fp32_cmd and not any("layerPrecisions" in x for x in fp32_cmd)
    assert joined.startswith("trtexec --onnx=")


@pytest.mark.skipif(import_tensorrt()[0] is not None, reason="TensorRT is installed here: the engine test below runs")
def test_engine_request_without_tensorrt_prints_the_trtexec_commands(tiny: dict[str, Path], capsys) -> None:  # noqa: ANN001
    import json

    from rissole_export.cli import main

    manifest = json.loads((tiny["bundle"] / MANIFEST).read_text())
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT cannot be imported(.|\n)*trtexec --onnx=.*denoiser\.onnx"):
        build_engines(engine_plans(tiny["bundle"], manifest))
    out = tiny["dir"] / "bundle-cli"
    assert main([str(tiny["ckpt"]), "--out", str(out), "--max-samples", "2", "--engine", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot build TensorRT engines here" in err and "--maxShapes=x:16x10x4x4" in err
    assert (out / MANIFEST).is_file()  # the ONNX bundle is written before the engine step
    recorded = json.loads((out / MANIFEST).read_text())["sampler"]  # no --sampler: the device default, UniPC-10
    assert (recorded["kind"], recorded["num_steps"], len(recorded["timesteps"])) == ("unipc", 10, 10)


@pytest.mark.skipif(import_tensorrt()[0] is None, reason="TensorRT cannot be installed on this machine (no wheel reachable, no GPU)")
def test_tensorrt_builds_engines_with_fp32_norm_layers(tiny: dict[str, Path]) -> None:  # pragma: no cover - needs a GPU
    import json

    manifest = json.loads((tiny["bundle"] / MANIFEST).read_text())
    paths = build_engines(engine_plans(tiny["bundle"], manifest, workspace_mb=512))
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert (tiny["bundle"] / "timing.cache").is_file()
