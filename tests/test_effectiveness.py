"""The per-defense verdict on constructed measurements: direction, tolerance, seed variance."""

from __future__ import annotations

import math

import pytest

from defcon.effectiveness import Summary, judge, paired_drop
from defcon.vocabulary import Direction, Metric

HIGHER = Metric(name="watermark_accuracy", direction=Direction.HIGHER, tolerance=0.10)
LOWER = Metric(name="attack_success_rate", direction=Direction.LOWER, tolerance=0.05)


def test_collapse_of_a_higher_is_better_metric_is_a_drop() -> None:
    verdict = judge("model_watermark", HIGHER, [0.98, 0.99, 1.0], [0.12, 0.08, 0.15])
    assert not verdict.effective
    assert verdict.drop == pytest.approx(0.8733, abs=1e-3)


def test_rise_of_a_lower_is_better_metric_is_a_drop() -> None:
    verdict = judge("backdoor_pruning", LOWER, [0.02, 0.03, 0.01], [0.60, 0.55, 0.70])
    assert not verdict.effective
    assert verdict.drop > 0.5


def test_improvement_is_never_a_drop() -> None:
    assert judge("x", LOWER, [0.5, 0.5], [0.0, 0.1]).effective
    assert judge("x", HIGHER, [0.5, 0.5], [0.9, 0.8]).effective


def test_small_drop_within_tolerance_stays_effective() -> None:
    assert judge("x", HIGHER, [0.90, 0.91, 0.92], [0.86, 0.87, 0.88]).effective


def test_noisy_seeds_do_not_produce_a_confident_drop() -> None:
    # mean drop 0.12 > tolerance 0.10, but the seeds disagree wildly: not a confident drop
    alone, combined = [0.9, 0.9, 0.9], [0.6, 1.0, 0.74]
    mean, lower = paired_drop(HIGHER, alone, combined)
    assert mean == pytest.approx(0.12, abs=1e-9)
    assert lower < HIGHER.tolerance
    assert judge("x", HIGHER, alone, combined).effective


def test_consistent_seeds_with_the_same_mean_drop_are_a_confident_drop() -> None:
    alone, combined = [0.9, 0.9, 0.9], [0.77, 0.78, 0.79]
    mean, lower = paired_drop(HIGHER, alone, combined)
    assert mean == pytest.approx(0.12, abs=1e-9)
    assert lower > HIGHER.tolerance
    assert not judge("x", HIGHER, alone, combined).effective


def test_single_seed_compares_the_point_estimate() -> None:
    assert not judge("x", HIGHER, [0.9], [0.7]).effective
    assert judge("x", HIGHER, [0.9], [0.85]).effective


def test_tolerance_override_is_used() -> None:
    assert judge("x", HIGHER, [0.9], [0.7], tolerance=0.3).effective
    assert judge("x", HIGHER, [0.9], [0.7], tolerance=0.3).tolerance == 0.3


def test_lost_privacy_guarantee_is_an_unbounded_drop() -> None:
    epsilon = Metric(name="epsilon", direction=Direction.LOWER, tolerance=1.0)
    verdict = judge("dp_sgd", epsilon, [3.0, 3.1], [math.inf, math.inf])
    assert not verdict.effective
    assert math.isinf(verdict.drop)


def test_seed_counts_must_match() -> None:
    with pytest.raises(ValueError):
        paired_drop(HIGHER, [0.9, 0.8], [0.9])


def test_summary_mean_and_sample_std() -> None:
    summary = Summary.of([1.0, 2.0, 3.0])
    assert summary.mean == pytest.approx(2.0)
    assert summary.std == pytest.approx(1.0)
    assert str(summary) == "2.000 ± 1.000"
    assert Summary.of([0.5]).std == 0.0
