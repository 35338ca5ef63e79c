"""The runtime as its own distribution: a fresh virtual environment with only `pip install ./runtime`
holds no PyTorch (nor any other training dependency), and its `rissole-run` samples a bundle that
the main package exported to exactly the pixels the main environment's runtime gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rissole_runtime.cli import main as run_main
from test_export import tiny_export

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"numpy", "onnxruntime", "pillow", "rissole-runtime",
           # onnxruntime's own dependencies, and what a fresh venv starts with
           "coloredlogs", "flatbuffers", "humanfriendly", "mpmath", "packaging", "protobuf", "sympy", "pip",
           "setuptools"}


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with ./runtime installed by pip, as a device would."""
    venv = tmp_path_factory.mktemp("runtime_venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT / "runtime")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return venv


def installed(venv: Path) -> set[str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze",
                          "--disable-pip-version-check"], capture_output=True, text=True, check=True).stdout
    return {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines() if "==" in line}


def test_runtime_distribution_installs_without_torch(runtime_venv: Path) -> None:
    found = installed(runtime_venv)
    assert "rissole-runtime" in found
    assert not {"torch", "einops", "pyyaml", "tqdm", "safetensors", "onnx"} & found
    assert found <= ALLOWED, f"unexpected packages in the runtime venv: {sorted(found - ALLOWED)}"


def test_runtime_venv_samples_the_main_packages_bundle(runtime_venv: Path, tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    bundle = tiny_export(tmp_path / "export")["bundle"]  # exported by the main package (torch)
    args = [str(bundle), "-n", "5", "--steps", "4", "--seed", "3", "--guidance", "2", "--top-m", "0.5", "--verify",
            "--quiet", "--threads", "1"]
    done = subprocess.run([str(runtime_venv / "bin" / "rissole-run"), *args, "--out", str(tmp_path / "venv.png"),
                           "--npy", str(tmp_path / "venv.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run_main([*args, "--out", str(tmp_path / "main.png"), "--npy", str(tmp_path / "main.npy")]) == 0
    venv, main = np.load(tmp_path / "venv.npy"), np.load(tmp_path / "main.npy")
    assert venv.shape == (5, 1, 32, 32) and venv.std() > 10  # real images, not a blank grid
    np.testing.assert_array_equal(venv, main)
