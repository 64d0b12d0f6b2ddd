"""Technique scores (accuracy, balanced accuracy, confusion, misses) on constructed labels."""

from __future__ import annotations

import pytest

from defcon.bench.results import stability
from defcon.effectiveness import Summary, combination_label, defense_outcome, judge
from defcon.planning.records import CompositionRecord, DefenseResult
from defcon.report.scoring import score
from defcon.vocabulary import Direction, Metric, Stage

WM = Metric(name="watermark_accuracy", direction=Direction.HIGHER, tolerance=0.1)


def record(
    order: tuple[str, ...],
    measured_drop: bool | None,
    predicted: dict[str, str],
    seeds: tuple[int, ...] = (0, 1, 2),
) -> CompositionRecord:
    """A one-defense record: dropped (True), held (False) or inconclusive (None)."""
    combined = {True: [0.1, 0.1, 0.12], False: [0.97, 0.98, 0.99], None: [0.2, 0.98, 0.6]}[
        measured_drop
    ]
    verdict = judge(order[0], WM, [0.97, 0.99, 0.98], combined, [0.05, 0.0, 0.02])
    outcome = defense_outcome([verdict])
    result = DefenseResult(
        defense=order[0], stage=Stage.PRE, metrics=(verdict,), outcome=outcome,
        clean_accuracy_alone=Summary.of([0.9] * 3),
    )  # fmt: skip
    return CompositionRecord(
        defenses=order, order=order, dataset="digits", profile="tiny", seeds=seeds,
        scenario=(), results=(result,), clean_accuracy_no_defense=Summary.of([0.9] * 3),
        clean_accuracy_combined=Summary.of([0.9] * 3),
        label=combination_label([outcome]), predicted=predicted,
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
    assert "a.watermark_accuracy dropped" in missed_conflict.evidence


def test_abstentions_score_the_lean_and_apart_the_decided_share_with_coverage() -> None:
    guess = {"factors": "ineffective"}
    records = [
        record(("a", "b"), True, guess),
        record(("a", "c"), False, guess).model_copy(update={"abstained": ("factors",)}),
        record(("a", "d"), False, {"factors": "effective"}),
        record(("a", "e"), True, {"factors": "effective"}),
    ]
    result = score("factors", records)
    assert result.n == 4 and result.accuracy == pytest.approx(0.5)  # the lean, everywhere
    assert result.decided == 3 and result.coverage == pytest.approx(0.75)
    # decided: (a,b) right, (a,d) right, (a,e) wrong → recall 1/2 on conflicts, 1/1 on effective
    assert result.decided_accuracy == pytest.approx(2 / 3)
    assert result.decided_balanced_accuracy == pytest.approx((0.5 + 1.0) / 2)
    # a record written before abstention has none, so every label is decided
    old = CompositionRecord.model_validate(
        {k: v for k, v in records[0].model_dump().items() if k != "abstained"}
    )
    assert old.abstained == () and score("factors", [old]).coverage == 1.0


def test_inconclusive_combinations_are_not_scored() -> None:
    records = [
        record(("a", "b"), True, {"defcon": "ineffective", "naive": "effective"}),
        record(("a", "c"), None, {"defcon": "effective", "naive": "effective"}),
    ]
    assert records[1].label == "inconclusive"
    assert score("defcon", records).n == 1
    assert score("defcon", records).accuracy == pytest.approx(1.0)
    assert score("defcon", records[1:]).accuracy is None


def test_label_flip_rate_counts_only_combinations_conclusive_in_both_runs() -> None:
    guess = {"defcon": "effective", "naive": "effective"}
    first = [
        record(("a", "b"), True, guess),
        record(("a", "c"), False, guess),
        record(("a", "d"), None, guess),
    ]
    second = [
        record(("a", "b"), True, guess, seeds=(9, 10, 11)),
        record(("a", "c"), True, guess, seeds=(9, 10, 11)),  # flipped
        record(("a", "d"), False, guess, seeds=(9, 10, 11)),  # conclusive in one run only
    ]
    result = stability(first, second)
    assert result["conclusive_in_both"] == 2
    assert result["label_flips"] == 1
    assert result["label_flip_rate"] == pytest.approx(0.5)
    assert result["second_seeds"] == [9, 10, 11]


def test_one_measured_class_only() -> None:
    records = [record(("a", "b"), False, {"defcon": "effective", "naive": "ineffective"})] * 3
    assert records[0].label == "effective"
    assert score("defcon", records).balanced_accuracy == pytest.approx(1.0)
    assert score("naive", records).balanced_accuracy == pytest.approx(0.0)


def test_rejudging_a_record_keeps_its_values_and_redoes_the_verdicts() -> None:
    from defcon.planning.records import rejudged

    original = record(("a", "b"), True, {"defcon": "ineffective", "naive": "effective"})
    assert rejudged(original) == original  # same rule, same values: nothing changes
    # a record whose verdicts were judged wrongly (e.g. by an earlier rule) is corrected
    wrong = original.model_copy(update={"label": "effective"})
    assert rejudged(wrong).label == "ineffective"
    assert rejudged(wrong).results[0].metrics[0].alone == original.results[0].metrics[0].alone
