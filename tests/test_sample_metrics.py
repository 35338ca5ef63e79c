"""Seam score and copy check on real Fashion-MNIST images."""

from __future__ import annotations

import numpy as np
import pytest

from rissole.metrics.copies import copy_rate
from rissole.metrics.seams import boundary_interior_steps, seam_score


@pytest.fixture(scope="module")
def train_500() -> np.ndarray:
    from rissole.data import load_source

    return load_source("fmnist:train", limit=500).images


def test_seam_score_is_one_for_real_and_large_for_visible_seams(fmnist_test_300: np.ndarray) -> None:
    real = fmnist_test_300
    assert seam_score(real[:150], real[150:], 2)["score"] == pytest.approx(1.0, abs=0.1)
    seamed = real[:150].astype(np.int16)
    seamed[..., :16, 16:] += 40  # shift the top-right block's intensity: a visible seam
    seamed = np.clip(seamed, 0, 255).astype(np.uint8)
    s = seam_score(seamed, real[150:], 2)
    assert s["score"] > 1.5
    # the other grids look at other lines: a g=4 check sees the g=2 boundaries too (they are a subset)
    assert seam_score(seamed, real[150:], 4)["score"] > 1.1


def test_boundary_positions() -> None:
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    x[..., :, 4:] = 1.0  # a step exactly at the g=2 boundary between columns 3 and 4
    across, inside = boundary_interior_steps(x, 2)
    assert across == pytest.approx(0.5)  # the column boundary steps by 1, the row boundary by 0
    assert inside == 0.0
    with pytest.raises(ValueError):
        boundary_interior_steps(x, 3)


def test_copy_rate_separates_copies_from_new_images(train_500: np.ndarray, fmnist_test_300: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    copies = np.clip(train_500[:100].astype(np.int16) + rng.integers(-2, 3, train_500[:100].shape), 0, 255).astype(np.uint8)
    assert copy_rate(copies, train_500, progress=False)["copy_rate"] == 1.0
    held_out = copy_rate(fmnist_test_300[:100], train_500, progress=False)
    assert held_out["copy_rate"] <= 0.02
    dup = np.concatenate([train_500, train_500[:3]])  # exact duplicates in the data do not zero the bar
    assert copy_rate(copies, dup, progress=False)["nearest_train_pair"] == held_out["nearest_train_pair"]
    noise = rng.integers(0, 256, (50, 1, 32, 32), dtype=np.uint8)
    assert copy_rate(noise, train_500, progress=False)["copy_rate"] == 0.0


def test_eval_cli_seams_and_copies(tmp_path, fmnist_test_300: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from rissole.cli.main import main

    monkeypatch.setenv("RISSOLE_CACHE", str(tmp_path / "cache"))
    np.save(tmp_path / "s.npy", fmnist_test_300[:50])
    assert main(["eval", "seams", str(tmp_path / "s.npy"), "--grid", "2", "-n", "50", "--ref", "fmnist:test",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert main(["eval", "copies", str(tmp_path / "s.npy"), "--train", "fmnist:test", "-n", "50",
                 "--json", str(tmp_path / "c.json")]) == 0
    import json

    assert json.loads((tmp_path / "c.json").read_text())["copy_rate"] == 1.0  # these samples ARE training images
    assert json.loads((tmp_path / "s.json").read_text())["score"] == pytest.approx(1.0, abs=0.15)
    assert list((tmp_path / "cache" / "copies").glob("*.json"))  # the bar is cached
