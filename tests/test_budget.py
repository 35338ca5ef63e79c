"""`rissole budget` on the shipped head configs: the budget is respected and the widest model that fits is
chosen, the printed counts sum to the total, activation memory is measured (it scales with the batch),
and on a GPU the estimate is within 10% of the peak CUDA allocation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from rissole.budget import fit_budget, head_of, parse_count, training_memory
from rissole.config import load_config
from rissole_runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["configs/rissole/fmnist_g2.yaml", "configs/rdm/fmnist_vq.yaml", "configs/rarm/fmnist_vq.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_budget_respected_and_widest(path: str) -> None:
    config = load_config(ROOT / path)
    spec = head_of(config)
    for budget in (500_000, 2_000_000):
        fit = fit_budget(config, budget)
        counts = fit.counts
        assert counts["total"] <= budget
        assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
        width = fit.model[spec.width_key]
        wider = [t for t in fit.tried if t[0] > width]
        assert wider and wider[0][2] > budget  # the next width tried is over the budget: this one is the widest
    assert parse_count("0.5M") == 500_000 and parse_count("250k") == 250_000 and parse_count("2e6") == 2_000_000


def test_depths_widen_the_search_and_tiny_budget_is_refused() -> None:
    config = load_config(ROOT / CONFIGS[0])
    one = fit_budget(config, 1_000_000)
    both = fit_budget(config, 1_000_000, depths=[1, 2])
    assert one.counts["total"] <= both.counts["total"] <= 1_000_000
    with pytest.raises(ConfigError, match="no rissole model of this config fits 1,000 parameters"):
        fit_budget(config, 1_000)


def test_activations_are_measured_and_scale_with_the_batch() -> None:
    config = load_config(ROOT / CONFIGS[1])
    a = training_memory(config, 16)["bytes"]
    b = training_memory(config, 32)["bytes"]
    assert a["parameters"] == a["gradients"] == b["parameters"] and a["adam_moments"] == 2 * a["parameters"]
    assert 1.8 < b["activations"] / a["activations"] < 2.2, (a, b)
    assert a["total"] == sum(v for k, v in a.items() if k != "total")


def test_cli_writes_a_config_the_trainer_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rissole.cli.main import main
    from rissole.heads.registry import head

    out = tmp_path / "fit.yaml"
    assert main(["budget", str(ROOT / CONFIGS[2]), "--params", "0.5M", "--batch", "8", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "fits GTX 1080 Ti (11 GiB): yes" in text and "activations" in text
    cfg = yaml.safe_load(out.read_text())
    assert cfg["train"]["max_params"] == 500_000
    model = head("rarm").build_model(cfg["model"])
    assert head("rarm").parameter_counts(model)["total"] <= 500_000
    assert main(["budget", str(ROOT / CONFIGS[2]), "--params", "0.5M", "--out", str(out)]) == 2  # exists: refused
    assert yaml.safe_load(out.read_text()) == cfg
    other = tmp_path / "notes.yaml"
    other.write_text("just notes\n")
    assert main(["budget", str(ROOT / CONFIGS[2]), "--params", "0.5M", "--out", str(other), "--force"]) == 2
    assert other.read_text() == "just notes\n"  # --force replaces a training config only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: the peak CUDA allocation needs one")
def test_estimate_within_ten_percent_of_the_cuda_peak() -> None:
    for path in CONFIGS:
        mem = training_memory(load_config(ROOT / path), 64, "cuda")
        b = mem["bytes"]
        estimate = b["total"] - b["ema"]
        assert abs(estimate - mem["cuda_peak_allocated"]) <= 0.10 * mem["cuda_peak_allocated"], (path, mem)
