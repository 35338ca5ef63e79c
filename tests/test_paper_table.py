"""The paper table's protocol: per-row FID spread, the verdict on each of the paper's orderings, and the
earlier table kept when the first stage changes (benchmarks/paper_table.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import paper_table as pt


def evals(*fids: float, boot: float = 0.5) -> list[dict]:
    return [{"fid": f, "fid_bootstrap_std": boot} for f in fids]


def test_fid_summary_is_mean_and_seed_spread() -> None:
    s = pt.fid_summary(evals(40.0, 41.0, 42.0, boot=0.4))
    assert s["mean"] == pytest.approx(41.0) and s["seeds"] == 3
    assert s["seed_sd"] == pytest.approx(1.0) and s["se"] == pytest.approx(1.0 / 3 ** 0.5)
    assert s["bootstrap_se"] == pytest.approx(0.4)
    assert pt.fid_summary([]) is None


def test_orderings_hold_fall_inside_or_reverse_by_two_standard_errors() -> None:
    def row(name: str, *fids: float) -> dict:
        return {"row": name, "fid": pt.fid_summary(evals(*fids))}

    rows = [row("rissole", 38.0, 38.2, 37.8), row("rissole-rag", 90.0, 91.0, 89.0),  # far apart: holds
            row("rissole+p", 38.1, 38.4, 37.9),  # a tenth apart, spread 0.2: inside
            row("rissole+pos", 35.0, 35.1, 34.9),  # 3 lower than RISSOLE, spread 0.1: reversed
            row("rdm", 39.0)]  # one seed: its bootstrap SE (0.5) is used
    v = {o["worse"]: o for o in pt.ordering_verdicts(rows)}
    assert v["rissole-rag"]["verdict"] == "holds" and v["rissole-rag"]["difference"] == pytest.approx(52.0)
    assert v["rissole+p"]["verdict"] == "inside the spread"
    assert v["rissole+pos"]["verdict"] == "reversed"
    se_rdm = (pt.fid_summary(evals(38.0, 38.2, 37.8))["se"] ** 2 + 0.5 ** 2) ** 0.5
    assert v["rdm"]["se"] == pytest.approx(se_rdm) and v["rdm"]["verdict"] == "inside the spread"  # 1.0 < 2 x 0.52
    assert v["ldm"]["verdict"] == "not measured"


def test_a_table_on_another_first_stage_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "paper_table.json"
    monkeypatch.setattr(pt, "RESULTS", results)
    assert pt.previous_tables({"weights_hash": "b"}) == []
    results.write_text(json.dumps({"rows": [{"row": "rissole"}]}))  # written before the first stage was recorded
    kept = pt.previous_tables({"weights_hash": "b"})
    assert len(kept) == 1 and kept[0]["first_stage"]["vqgan"] == "checkpoints/vqgan-fmnist-f4"
    results.write_text(json.dumps({"rows": [], "first_stage": {"weights_hash": "b"}, "previous": kept}))
    assert pt.previous_tables({"weights_hash": "b"}) == kept  # same first stage: replaced, the older one still kept


def test_rows_recorded_on_the_same_first_stage_are_kept_with_their_machine(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """runs/ stays on the machine that made it: a report elsewhere must not turn measured rows into 'not trained'."""
    results = tmp_path / "paper_table.json"
    monkeypatch.setattr(pt, "RESULTS", results)
    rows = [{"row": "rissole", "params": 1, "ddim50": [{"fid": 38.3}]}, {"row": "rissole-rag", "ddim50": []},
            {"row": "rdm", "params": 1, "ddim50": [{"fid": 36.7}], "machine": {"cpu": "X"}}]
    results.write_text(json.dumps({"rows": rows, "machine": {"cpu": "Y"}, "first_stage": {"weights_hash": "b"}}))
    kept = pt.recorded_rows({"weights_hash": "b"})
    assert kept["rissole"]["ddim50"][0]["fid"] == 38.3 and kept["rissole"]["machine"] == {"cpu": "Y"}  # the table's
    assert "machine" not in kept["rissole-rag"]  # never trained: no machine to name
    assert kept["rdm"]["machine"] == {"cpu": "X"}  # its own, when recorded
    assert pt.recorded_rows({"weights_hash": "c"}) == {}  # another first stage: nothing carried over


def test_the_shipped_rdm_and_rarm_are_their_rows_own_models() -> None:
    """Only a checkpoint slimmed from the row's run with its EMA weights as trained can add seeds to the row."""
    assert pt.shipped_twin("rdm") == pt.ROOT / "checkpoints" / "rdm-fmnist-vq"
    assert pt.shipped_twin("rarm") == pt.ROOT / "checkpoints" / "rarm-fmnist-vq"
    assert pt.shipped_twin("rissole") is None  # the shipped RISSOLE is its own (fp16, wider) model


def test_seeds_evaluated_here_are_added_to_a_recorded_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pt, "RUNS", tmp_path)
    recorded = {"row": "rdm", "params": 1, "machine": {"cpu": "X"},
                "ddim50": [{"seed": 0, "n": 2000, "fid": 36.0, "fid_bootstrap_std": 0.4}]}
    d = tmp_path / "rdm"
    d.mkdir()
    for seed, fid in ((0, 99.0), (1, 37.0)):  # seed 0 is recorded already: the record wins
        (d / f"eval_ddim50_n2000_seed{seed}.json").write_text(json.dumps(
            {"seed": seed, "n": 2000, "fid": fid, "fid_bootstrap_std": 0.6}))
    entry = pt.with_added_seeds(recorded, d, 2000, {"cpu": "here"})
    assert [e["fid"] for e in entry["ddim50"]] == [36.0, 37.0] and entry["ddim50"][1]["machine"] == "here"
    assert entry["ddim50"][1]["checkpoint"] == "checkpoints/rdm-fmnist-vq" and entry["machine"] == {"cpu": "X"}
    assert entry["fid"]["mean"] == pytest.approx(36.5) and entry["fid"]["seeds"] == 2
    assert recorded["ddim50"][0]["fid"] == 36.0 and len(recorded["ddim50"]) == 1  # the record itself unchanged
    assert pt.with_added_seeds(recorded, tmp_path / "elsewhere", 2000, {"cpu": "here"}) is recorded
