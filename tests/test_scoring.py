"""Technique scores (accuracy, balanced accuracy, confusion, misses) on constructed labels."""

from __future__ import annotations

import pytest

from defcon.effectiveness import Summary, judge
from defcon.records import CompositionRecord, DefenseResult
from defcon.scoring import score
from defcon.vocabulary import Direction, Metric, Stage

WM = Metric(name="watermark_accuracy", direction=Direction.HIGHER, tolerance=0.1)


def record(order: tuple[str, ...], measured_drop: bool, predicted: dict[str, str]) -> CompositionRecord:
    combined = [0.1, 0.1] if measured_drop else [0.95, 0.97]
    verdict = judge(order[0], WM, [0.97, 0.99], combined)
    result = DefenseResult(
        defense=order[0], stage=Stage.PRE, metrics=(verdict,), effective=verdict.effective,
        clean_accuracy_alone=Summary.of([0.9, 0.9]), scenario_alone=(),
    )  # fmt: skip
    return CompositionRecord(
        defenses=order, order=order, dataset="digits", profile="tiny", seeds=(0, 1),
        scenario=(), results=(result,), clean_accuracy_no_defense=Summary.of([0.9, 0.9]),
        clean_accuracy_combined=Summary.of([0.9, 0.9]),
        label="ineffective" if measured_drop else "effective", predicted=predicted,
        forced=True, tolerances={}, versions={}, wall_time_s=1.0, cache={},
    )  # fmt: skip


def test_scores_on_constructed_labels() -> None:
    records = [
        record(("a", "b"), True, {"defcon": "ineffective", "naive": "effective"}),
        record(("a", "c"), True, {"defcon": "ineffective", "naive": "ineffective"}),
        record(("a", "d"), False, {"defcon": "effective", "naive": "ineffective"}),
        record(("a", "e"), False, {"defcon": "ineffective", "naive": "ineffective"}),
    ]
    defcon = score("defcon", records)
    assert defcon.accuracy == pytest.approx(0.75)
    assert defcon.balanced_accuracy == pytest.approx((1.0 + 0.5) / 2)
    assert defcon.confusion["effective"]["ineffective"] == 1
    assert defcon.confusion["ineffective"]["ineffective"] == 2
    assert [m.combination for m in defcon.misses] == [("a", "e")]
    assert "every defense held" in defcon.misses[0].evidence

    naive = score("naive", records)
    assert naive.accuracy == pytest.approx(0.25)
    assert naive.balanced_accuracy == pytest.approx((0.5 + 0.0) / 2)
    missed_conflict = next(m for m in naive.misses if m.combination == ("a", "b"))
    assert "a.watermark_accuracy 0.980 → 0.100" in missed_conflict.evidence


def test_one_measured_class_only() -> None:
    records = [record(("a", "b"), False, {"defcon": "effective", "naive": "ineffective"})] * 3
    assert score("defcon", records).balanced_accuracy == pytest.approx(1.0)
    assert score("naive", records).balanced_accuracy == pytest.approx(0.0)
