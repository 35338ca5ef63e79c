"""The budget sweep's bookkeeping (benchmarks/param_budget.py): which rows are the paper table's own models,
and where each row's figures come from when runs/ is on another machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import paper_table as pt
from benchmarks import param_budget as pb


@pytest.fixture()
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """RUNS and both results files under tmp_path, so nothing in the checkout is read or written."""
    monkeypatch.setattr(pb, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(pb, "RESULTS", tmp_path / "param_budget.json")
    monkeypatch.setattr(pt, "RESULTS", tmp_path / "paper_table.json")
    return tmp_path


def test_paper_table_twins_are_the_rows_with_the_same_fitted_config(sweep: Path) -> None:
    twins = {row: pb.paper_table_twin(pb.fitted(row)) for row in pb.ROWS}
    assert twins["rissole-2M"] == "rissole" and twins["ldm-2M"] == "ldm" and twins["rdm-2M"] == "rdm"
    assert twins["rissole-1M"] == "rissole-half"  # width 32: the table's half-width row
    assert twins["rissole-0.25M"] is None and twins["rdm-1M"] is None


def ev(row: str, seed: int, fid: float) -> dict:
    return {"row": row, "seed": seed, "n": 2000, "fid": fid, "kid_mean": 0.02, "fid_bootstrap_std": 0.5}


def test_row_figures_come_from_runs_then_the_record_then_a_twin(sweep: Path) -> None:
    pt.write_json_atomic(pt.RESULTS, {"rows": [
        {"row": "rissole", "ddim50": [ev("rissole", s, 38.0 + s) for s in (0, 1, 2)], "train_seconds": 60.0}]})
    (sweep / "runs" / "ldm-0.25M").mkdir(parents=True)
    for s in (0, 1):
        timed = {**ev("ldm-0.25M", s, 60.0 + s), "eval_wall_s": 100.0}
        (sweep / "runs" / "ldm-0.25M" / f"eval_n2000_seed{s}.json").write_text(json.dumps(timed))
    res = pb.report(2000)
    by = {r["row"]: r for r in res["rows"]}
    assert by["ldm-0.25M"]["source"] == "trained here" and by["ldm-0.25M"]["fid"]["mean"] == pytest.approx(60.5)
    twin = by["rissole-2M"]
    assert twin["source"] == "paper-table row rissole" and [e["seed"] for e in twin["evals"]] == [0, 1]  # SEEDS only
    assert twin["fid"]["mean"] == pytest.approx(38.5) and twin["train_wall_s"] == 60.0
    assert by["rdm-0.25M"]["source"] == "not run" and by["rdm-0.25M"]["fid"] is None
    assert by["ldm-0.25M"]["parameters"] == 168_634 < 250_000
    # the sweep's wall time: the twin's training once, the two timed seeds, the twin's two untimed ones
    assert res["wall"] == {"train_s": 60.0, "trained_rows": 1, "eval_s": 200.0, "timed_evals": 2, "untimed_evals": 2,
                           "eval_s_per_seed": 100.0}

    # runs/ gone (another machine): the recorded row is kept while its fitted config is the same
    (sweep / "runs" / "ldm-0.25M" / "eval_n2000_seed0.json").unlink()
    (sweep / "runs" / "ldm-0.25M" / "eval_n2000_seed1.json").unlink()
    again = {r["row"]: r for r in pb.report(2000)["rows"]}
    assert again["ldm-0.25M"] == by["ldm-0.25M"]
    recorded = json.loads(pb.RESULTS.read_text())
    recorded["rows"][[r["row"] for r in recorded["rows"]].index("ldm-0.25M")]["config"]["model"]["model_channels"] = 999
    pt.write_json_atomic(pb.RESULTS, recorded)  # as if the base config had changed since it was measured
    assert {r["row"]: r for r in pb.report(2000)["rows"]}["ldm-0.25M"]["source"] == "not run"
