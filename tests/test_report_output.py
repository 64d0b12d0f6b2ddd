"""The composition report fits a terminal (full defense names at 100 columns, a width of the
caller's choosing) and a record exports to pandas."""

from __future__ import annotations

import io
from pathlib import Path

from defcon.report.reports import load_record, print_report
from defcon.terminal import SafeConsole

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / (
    "benchmarks/results/records/fmnist/"
    "fmnist-quick-seeds0+3to5-adversarial_training+backdoor_finetuning.json"
)


def _printed(width: int) -> str:
    out = io.StringIO()
    print_report(load_record(RECORD), SafeConsole(file=out, width=width, highlight=False))
    return out.getvalue()


def test_defense_names_stay_whole_at_100_columns() -> None:
    text = _printed(100)
    assert all(len(line) <= 100 for line in text.splitlines())
    table = text.split("Measured:")[0]  # the verdict line below the table may wrap freely
    for name in ("adversarial_training (in)", "backdoor_finetuning (in)"):
        assert name in table


def test_width_is_the_callers_choice(capsys) -> None:
    print_report(load_record(RECORD), width=140)
    wide = capsys.readouterr().out
    assert max(len(line) for line in wide.splitlines()) > 100


def test_a_record_exports_to_a_frame() -> None:
    record = load_record(RECORD)
    frame = record.to_frame()
    assert len(frame) == sum(len(r.metrics) for r in record.results)
    first = record.results[0].metrics[0]
    row = frame.iloc[0]
    assert row["defense"] == record.results[0].defense and row["metric"] == first.metric
    assert row["alone_mean"] == first.alone.center and row["outcome"] == first.outcome
    assert {"gain_lower", "drop_upper", "tolerance", "defense_outcome"} <= set(frame.columns)
    assert frame.attrs["label"] == record.label
