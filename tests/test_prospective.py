"""The prospective protocol script: predictions are written once and scored as frozen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_script

from defcon.errors import DefconError
from defcon.report.reports import load_record

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks/results/records/adult/adult-quick-seeds0+3to5-dp_sgd+explanations.json"


def test_predictions_are_never_overwritten(tmp_path):
    script = load_script("prospective")
    out = tmp_path / "predictions.json"
    out.write_text("{}")
    with pytest.raises(DefconError, match="never edited"):
        script.predict(["dp_sgd"], ["digits"], out)
    assert out.read_text() == "{}"


def test_scores_read_the_frozen_labels_not_todays(tmp_path):
    script = load_script("prospective")
    record = load_record(RECORD)
    assert record.conclusive
    wrong = "ineffective" if record.label == "effective" else "effective"
    document = {
        "written": "2026-01-01T00:00:00+00:00", "code": "0" * 40,
        "new_defenses": ["explanations"], "techniques": ["defcon", "naive"],
        "declarations": {}, "skipped": [],
        "combinations": [{
            "dataset": record.dataset, "defenses": sorted(record.defenses),
            "predicted": {"defcon": record.label, "naive": wrong},
        }],
    }  # fmt: skip
    text = script.score_markdown(json.loads(json.dumps(document)), [record])
    frozen, post_hoc = text.split("## Post hoc")
    rows = {
        line.split("|")[1].strip(): line for line in frozen.splitlines() if line.startswith("| ")
    }
    assert "| 1 | 1.00 |" in rows["defcon"] and "| 1 | 0.00 |" in rows["naive"]
    assert f"{wrong} ✗" in text and "Measured 1 of 1" in text
    # the post-hoc table re-runs today's techniques: naive's current label, not the frozen one
    from defcon.checker import check

    today = check(list(record.defenses), technique="naive").label
    naive_today = next(line for line in post_hoc.splitlines() if line.startswith("| naive |"))
    assert ("| 1 | 1.00 |" if today == record.label else "| 1 | 0.00 |") in naive_today
    assert "entered git after" not in text  # nothing held out: no such table
    key = f"{record.dataset}:{'+'.join(sorted(record.defenses))}"
    held = script.score_markdown(json.loads(json.dumps(document)), [record], ("abc1234", {key}))
    assert "the 1 combinations whose records entered git after `abc1234`" in held
