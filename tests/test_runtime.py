"""rissole-run: images from a bundle with torch blocked, parity with the PyTorch pipeline, refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rissole_runtime.errors import DataError, RissoleError
from rissole_runtime.bundle import DB_DIR, DENOISER, MANIFEST, open_bundle
from rissole_runtime.cli import main as run_main
from rissole_runtime.sampler import EdgeSampler
from test_export import tiny_export

BLOCKER = '''import sys
class _NoTorch:
    """Make every import of torch fail, as on a device without PyTorch."""
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
'''


def run_runtime_without_torch(bundle: Path, tmp_path: Path,
                              sampling: tuple[str, ...] = ("--steps", "4")) -> subprocess.CompletedProcess:
    """`rissole-run BUNDLE` in a fresh interpreter where importing torch fails (as on a device without
    PyTorch), writing tmp_path/grid.png and tmp_path/x.npy (5 images, `sampling` (default: the bundle's sampler, 4 steps),
    guidance 2, top-m 0.5, --verify); fails if torch got imported anyway."""
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block"), "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr  # the blocker works
    code = ("import sys; from rissole_runtime.cli import main; rc = main(sys.argv[1:]); "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch was imported'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, str(bundle), "-n", "5", *sampling, "--out",
                           str(tmp_path / "grid.png"), "--npy", str(tmp_path / "x.npy"), "--seed", "2", "--top-m", "0.5",
                           "--guidance", "2", "--verify", "--quiet"], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_export(tmp_path_factory.getbasetemp())


@pytest.fixture
def copy(tiny: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the bundle (blocks.npy copied, not linked) to damage."""
    dest = tmp_path / "bundle"
    shutil.copytree(tiny["bundle"], dest)
    return dest


def test_runtime_samples_with_torch_blocked(tiny: dict[str, Path], tmp_path: Path) -> None:
    res = run_runtime_without_torch(tiny["bundle"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "provider CPUExecutionProvider" in res.stdout and "verified" in res.stdout
    images = np.load(tmp_path / "x.npy")
    assert images.shape == (5, 1, 32, 32) and images.dtype == np.uint8 and images.std() > 5
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] > 64


def test_runtime_images_match_the_pytorch_pipeline(tiny: dict[str, Path]) -> None:
    """Same pseudo-queries (same seed) and same x_T: the images agree to the pixel level stated in the README."""
    import torch

    from rissole.heads.rissole.pipeline import RissolePipeline
    from rissole.heads.rissole.sampling import sample_blocks
    from rissole.retrieval.database import gather_neighbours

    edge = EdgeSampler(open_bundle(tiny["bundle"]), "cpu", threads=1)
    pipe = RissolePipeline.load(tiny["ckpt"], device="cpu")
    n, scale = 6, np.float32(pipe.config["scale_factor"])  # 6 samples: two network calls of max_samples = 4
    for seed, guidance, top_m in ((0, 1.0, 1.0), (3, 2.5, 0.3)):
        rows = edge.pseudo_queries(n, top_m, seed)
        np.testing.assert_array_equal(rows, pipe.pseudo_queries(n, top_m, seed))
        x_T = edge.initial_noise(n, seed)
        sampler = edge.sampler(6)
        images = edge.decode(edge.sample_latents(edge.neighbours(rows), x_T, sampler, guidance))
        nb = torch.from_numpy(gather_neighbours(pipe.db, pipe.neighbour_ids(rows), pipe.k) * scale)
        lat = sample_blocks(pipe.model, sampler, nb, n, torch.Generator(), guidance, x_T=torch.from_numpy(x_T)) / scale
        ref = pipe.decode(lat)
        assert np.abs(images.astype(int) - ref.astype(int)).max() <= 1
        assert (images == ref).mean() > 0.99
        full, _ = edge.generate(n, 6, seed, top_m, guidance)
        np.testing.assert_array_equal(full, images)  # generate() = these steps


def _cli(bundle: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:  # noqa: ANN001
    rc = run_main([str(bundle), "-n", "2", "--steps", "2", "--out", str(tmp_path / "g.png"), "--quiet", *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("sampling", [("--sampler", "ddim", "--steps", "6"), ("--sampler", "ddim", "--steps", "6", "--eta", "1"),
                                      ("--sampler", "dpmpp2m", "--steps", "5"), ("--sampler", "unipc", "--steps", "5")])
def test_same_seed_gives_the_same_image_in_rissole_sample_and_rissole_run(tiny: dict[str, Path], tmp_path: Path,
                                                                          sampling: tuple[str, ...]) -> None:
    """One noise source (rissole_runtime.diffusion.noise): x_T and, with eta = 1, every step's noise agree, so the
    desktop CLI and the device CLI give the same images from the same seed; 6 images are 2 runtime chunks."""
    from rissole.cli.main import main as rissole_main

    args = ["-n", "6", "--seed", "3", *sampling]
    assert rissole_main(["sample", "--ckpt", str(tiny["ckpt"]), *args, "--out", str(tmp_path / "a.png"),
                         "--npy", str(tmp_path / "a.npy"), "--device", "cpu"]) == 0
    assert run_main([str(tiny["bundle"]), *args, "--out", str(tmp_path / "b.png"), "--npy", str(tmp_path / "b.npy"),
                     "--threads", "1", "--quiet"]) == 0
    a, b = np.load(tmp_path / "a.npy").astype(int), np.load(tmp_path / "b.npy").astype(int)
    assert a.shape == b.shape == (6, 1, 32, 32) and a.std() > 5
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99  # the pixel tolerance of the parity test above


def test_truncated_database_is_refused(copy: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    blocks = copy / DB_DIR / "blocks.npy"
    data = blocks.read_bytes()
    blocks.write_bytes(data[: len(data) - 640])
    rc, err = _cli(copy, tmp_path, capsys)
    assert rc == 2 and "db/blocks.npy" in err and "truncated" in err


def test_missing_model_is_refused(copy: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    (copy / DENOISER).unlink()
    rc, err = _cli(copy, tmp_path, capsys)
    assert rc == 2 and f"{DENOISER}: missing (denoiser model)" in err


def test_manifest_of_another_grid_is_refused(copy: Path) -> None:
    m = json.loads((copy / MANIFEST).read_text())
    m["model"].update(grid=4, num_blocks=16, block_shape=[10, 2, 2])  # what a g = 4 export of this VQ-GAN says
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"db/manifest\.json: grid is 2, but .*manifest\.json expects 4"):
        open_bundle(copy)
    m["model"].update(grid=3, num_blocks=9)  # a manifest that does not even tile its latent
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match="do not tile the latent"):
        open_bundle(copy)


def test_model_of_another_export_is_refused(copy: Path) -> None:
    m = json.loads((copy / MANIFEST).read_text())
    m["denoiser"]["inputs"]["neighbours"]["shape"][1] = 10  # the manifest of a k = 10 export
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"denoiser\.onnx: model inputs .* another export"):
        EdgeSampler(open_bundle(copy), "cpu", 1)


def test_fast_open_checks_sizes_and_verify_checks_every_byte(copy: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    p = copy / "proposal.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed
    p.write_bytes(bytes(data))
    open_bundle(copy)  # fast mode: sizes and manifests only
    with pytest.raises(DataError, match=r"proposal\.npy: sha256 .* corrupt"):
        open_bundle(copy, verify=True)
    rc, err = _cli(copy, tmp_path, capsys, "--verify")
    assert rc == 2 and "proposal.npy" in err


def test_provider_choice(tiny: dict[str, Path]) -> None:
    from rissole_runtime.session import providers_for

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("auto")[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RissoleError, match="CUDAExecutionProvider is not in this onnxruntime build"):
            providers_for("cuda")


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="no CUDA execution provider here (CPU onnxruntime build, no GPU)")
def test_cuda_provider_is_used_and_reported(tiny: dict[str, Path]) -> None:  # pragma: no cover - needs a GPU
    edge = EdgeSampler(open_bundle(tiny["bundle"]), "cuda")
    assert edge.provider == "CUDAExecutionProvider"
    images, _ = edge.generate(2, 2)
    assert images.shape == (2, 1, 32, 32)


@pytest.mark.skipif("TensorrtExecutionProvider" not in ort.get_available_providers(),
                    reason="no TensorRT execution provider here (TensorRT cannot be installed, no GPU)")
def test_tensorrt_provider_is_used_and_reported(tiny: dict[str, Path]) -> None:  # pragma: no cover - needs a GPU
    edge = EdgeSampler(open_bundle(tiny["bundle"]), "tensorrt")
    assert edge.provider == "TensorrtExecutionProvider"
