"""`rissole encode` and the CLI on the shipped VQ-GAN: latents decode back to the images; commands and --help work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rissole.autoencoder import load_vqgan
from rissole.autoencoder.losses import psnr
from rissole.cli.main import build_parser, main
from rissole.data import to_model_range
from rissole_runtime.errors import DataError
from rissole.latents import open_latents
from rissole.paths import SHIPPED_VQGAN

# Measured by benchmarks/first_stage.py on the full test split (see benchmarks/results/first_stage.json);
# the tests hold the shipped model to a margin below that.
SHIPPED_MIN_PSNR = 24.0


def test_encode_memmap_decodes_back(tmp_path: Path, fmnist_test_300: np.ndarray) -> None:
    out = tmp_path / "lat" / "test.npy"
    assert main(["encode", "--source", "fmnist:test", "--limit", "200", "--out", str(out), "--batch-size", "64"]) == 0
    lat = open_latents(out)
    assert lat.array.shape == (200, 10, 8, 8) and lat.array.dtype == np.float32
    assert isinstance(lat.array, np.memmap) and not lat.array.flags.writeable
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["count"] == 200 and manifest["source"] == "fmnist:test"
    assert len(manifest["checkpoint_hash"]) == 64
    np.testing.assert_array_equal(lat.labels(), np.load(out.with_suffix(".labels.npy")))
    vq = load_vqgan(SHIPPED_VQGAN)
    x = to_model_range(fmnist_test_300[:200])
    with torch.no_grad():
        direct = vq.encode(x)
        decoded = vq.decode(torch.from_numpy(np.array(lat.array))).clamp(-1, 1)
    torch.testing.assert_close(torch.from_numpy(np.array(lat.array)), direct, rtol=1e-5, atol=1e-5)
    assert float(psnr(decoded, x).mean()) >= SHIPPED_MIN_PSNR


def test_truncated_latents_refused(tmp_path: Path) -> None:
    out = tmp_path / "test.npy"
    main(["encode", "--source", "fmnist:test", "--limit", "20", "--out", str(out)])
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        open_latents(out)


def test_reconstruct_writes_png(tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "rec.png"
    assert main(["vqgan", "reconstruct", "-n", "16", "--out", str(png)]) == 0
    with Image.open(png) as im:
        assert im.size == (2 * (16 * 34 + 2), 2 * (2 * 34 + 2))  # 16 per row, 2 rows of 32 px + 2 px pad, x2 scale


def test_every_command_has_help() -> None:
    parser = build_parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    for name, sub in actions.choices.items():
        assert sub.format_help().strip(), name
        for action in sub._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for sname, ssub in action.choices.items():
                    for opt in ssub._actions:
                        if opt.dest != "help":
                            assert opt.help, f"rissole {name} {sname} {opt.dest} has no help"


def test_cli_error_is_one_clear_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "rissole", "encode", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "x.npy")],
        capture_output=True, text=True,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "not a rissole checkpoint (no config.yaml)" in r.stderr
