"""benchmarks/unintended.py: audits each defense alone, writes predicted vs measured, resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_script

pytestmark = pytest.mark.filterwarnings("ignore")


def test_unintended_writes_pairs_accuracy_and_resumes(tmp_path: Path, capsys) -> None:
    bench = load_script("unintended")
    args = ["--datasets", "digits", "--profile", "tiny", "--seeds", "2", "--out", str(tmp_path),
            "--defenses", "backdoor_pruning,explanations"]  # fmt: skip
    assert bench.main(args) == 0
    result = json.loads((tmp_path / "unintended.json").read_text())
    rows = result["pairs"]
    assert {r["defense"] for r in rows} == {"backdoor_pruning", "explanations"}
    # digits has no sensitive attribute: the group risks are not measured
    assert {r["risk"] for r in rows} == {
        "evasion", "poisoning", "model_theft", "membership_inference", "data_reconstruction"
    }  # fmt: skip
    pruning_poisoning = next(
        r for r in rows if r["defense"] == "backdoor_pruning" and r["risk"] == "poisoning"
    )
    assert pruning_poisoning["verdict"] == "intended"
    # explanations moves only a mechanical factor: the guideline is silent on every risk
    assert {r["verdict"] for r in rows if r["defense"] == "explanations"} == {"silent"}
    stats = result["summary"]
    assert stats["pairs"] == len(rows) == 10
    assert sum(stats["verdicts"].values()) == 10
    text = (tmp_path / "UNINTENDED.md").read_text()
    assert "Prediction accuracy" in text and "## Silent (" in text and "Where the time went" in text
    assert "where it went" in capsys.readouterr().out
    assert bench.main(args) == 0  # every record reused
    assert "record reused" in capsys.readouterr().err
