"""The verdict rule on constructed measurements: gate, tolerance, three outcomes, labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from defcon.effectiveness import (
    Summary,
    combination_label,
    defense_outcome,
    interval,
    judge,
)
from defcon.vocabulary import Direction, Metric

HIGHER = Metric(name="watermark_accuracy", direction=Direction.HIGHER, tolerance=0.10)
LOWER = Metric(name="attack_success_rate", direction=Direction.LOWER, tolerance=0.05)
NONE_HIGH = [0.05, 0.02, 0.08]  # an undefended model fails a watermark check
NONE_LOW = [0.99, 1.0, 0.98]  # an undefended model is fully backdoored


def test_collapse_of_a_higher_is_better_metric_is_a_drop() -> None:
    verdict = judge("model_watermark", HIGHER, [0.98, 0.99, 1.0], [0.12, 0.08, 0.15], NONE_HIGH)
    assert verdict.outcome == "dropped"
    assert verdict.drop.mean == pytest.approx(0.8733, abs=1e-3)


def test_rise_of_a_lower_is_better_metric_is_a_drop() -> None:
    verdict = judge("backdoor_pruning", LOWER, [0.02, 0.03, 0.01], [0.60, 0.55, 0.70], NONE_LOW)
    assert verdict.outcome == "dropped"


def test_improvement_is_held() -> None:
    assert judge("x", LOWER, [0.5, 0.5, 0.5], [0.0, 0.1, 0.05], NONE_LOW).outcome == "held"
    assert judge("x", HIGHER, [0.5, 0.5, 0.5], [0.9, 0.8, 0.85], NONE_HIGH).outcome == "held"


def test_small_consistent_drop_within_tolerance_is_held() -> None:
    verdict = judge("x", HIGHER, [0.90, 0.91, 0.92], [0.87, 0.88, 0.89], NONE_HIGH)
    assert verdict.outcome == "held"


def test_noisy_seeds_are_inconclusive_not_a_drop_nor_a_hold() -> None:
    # mean drop 0.12 > tolerance 0.10, but the seeds disagree wildly: the seeds cannot tell
    verdict = judge("x", HIGHER, [0.9, 0.9, 0.9], [0.6, 1.0, 0.74], NONE_HIGH)
    assert verdict.drop.mean == pytest.approx(0.12, abs=1e-9)
    assert verdict.outcome == "inconclusive"


def test_consistent_seeds_with_the_same_mean_drop_are_a_drop() -> None:
    verdict = judge("x", HIGHER, [0.9, 0.9, 0.9], [0.77, 0.78, 0.79], NONE_HIGH)
    assert verdict.drop.lower > HIGHER.tolerance
    assert verdict.outcome == "dropped"


def test_a_single_seed_is_inconclusive() -> None:
    assert judge("x", HIGHER, [0.9], [0.2], [0.0]).outcome == "inconclusive"


def test_nan_is_inconclusive_never_held() -> None:
    verdict = judge("x", HIGHER, [0.9, 0.9, 0.9], [0.9, math.nan, 0.9], NONE_HIGH)
    assert verdict.outcome == "inconclusive"


def test_gate_a_defense_no_better_than_no_defense_cannot_drop() -> None:
    # dataset-inference-like: alone indistinguishable from no defense
    verdict = judge("x", HIGHER, [0.5, 0.6, 0.4], [0.0, 0.0, 0.0], [0.5, 0.55, 0.45])
    assert not verdict.effective_alone
    assert verdict.outcome == "not_effective_alone"
    assert defense_outcome([verdict]) == "not_effective_alone"


def test_tolerance_shrinks_to_half_the_defense_gain() -> None:
    # a gain of 0.15 against a 0.10 tolerance: losing 0.09 of it is losing more than half
    verdict = judge("x", HIGHER, [0.90, 0.91, 0.92], [0.81, 0.82, 0.83], [0.75, 0.76, 0.77])
    assert verdict.effective_alone
    assert verdict.tolerance == pytest.approx(0.075, abs=1e-9)
    assert verdict.outcome == "dropped"


def test_a_significant_gain_below_the_tolerance_fails_the_gate() -> None:
    # group-fairness-like: consistently a little better than no defense, less than it may lose
    lower = Metric(name="gap", direction=Direction.LOWER, tolerance=0.05)
    verdict = judge("x", lower, [0.040, 0.042, 0.041], [0.2, 0.2, 0.2], [0.080, 0.085, 0.082])
    assert verdict.gain.lower > 0  # significant …
    assert not verdict.effective_alone  # … but below the tolerance
    assert verdict.outcome == "not_effective_alone"


def test_tolerance_override_is_used() -> None:
    verdict = judge("x", HIGHER, [0.9, 0.9, 0.9], [0.7, 0.7, 0.7], NONE_HIGH, tolerance=0.3)
    assert verdict.declared_tolerance == 0.3
    assert verdict.outcome == "held"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1])
def test_bad_tolerances_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        judge("x", HIGHER, [0.9, 0.9], [0.7, 0.7], [0.1, 0.1], tolerance=bad)


def test_lost_privacy_guarantee_is_an_unbounded_drop() -> None:
    epsilon = Metric(name="epsilon", direction=Direction.LOWER, tolerance=1.0)
    inf = math.inf
    verdict = judge("dp_sgd", epsilon, [3.0, 3.1], [inf, inf], [inf, inf])
    assert verdict.effective_alone  # ∞ → 3: the gain is unbounded
    assert verdict.outcome == "dropped"


def test_seed_counts_must_match() -> None:
    with pytest.raises(ValueError):
        judge("x", HIGHER, [0.9, 0.8], [0.9], [0.1, 0.1])


def test_diagnostics_are_reported_not_judged() -> None:
    diagnostic = Metric(name="agreement", direction=Direction.HIGHER, tolerance=0, judged=False)
    verdict = judge("x", diagnostic, [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0])
    assert verdict.outcome == "diagnostic"
    held = judge("x", HIGHER, [0.9, 0.9, 0.9], [0.9, 0.9, 0.9], NONE_HIGH)
    assert defense_outcome([held, verdict]) == "held"


def test_combination_labels_follow_the_documented_precedence() -> None:
    assert combination_label(["held", "held"]) == "effective"
    assert combination_label(["held", "dropped", "inconclusive"]) == "ineffective"
    assert combination_label(["held", "inconclusive", "not_effective_alone"]) == "inconclusive"
    assert combination_label(["held", "not_effective_alone"]) == "not_effective_alone"


def test_summary_mean_std_and_json_safe_infinity() -> None:
    summary = Summary.of([1.0, 2.0, 3.0])
    assert summary.mean == pytest.approx(2.0)
    assert summary.std == pytest.approx(1.0)
    assert str(summary) == "2.000 ± 1.000"
    assert Summary.of([0.5]).std == 0.0
    infinite = Summary.of([math.inf, math.inf])
    text = infinite.model_dump_json()
    json.loads(text)  # valid JSON: no "Infinity" strings or bare Infinity
    assert "Infinity" not in text
    assert infinite.center == math.inf
    assert Summary.model_validate_json(text).raw() == [math.inf, math.inf]


def simulate(true_drop: float, sigma: float, n: int, trials: int, seed: int = 0) -> dict:
    """Outcome frequencies of the rule for paired drops ~ N(true_drop, sigma²) over n seeds."""
    rng = np.random.default_rng(seed)
    counts = {"held": 0, "dropped": 0, "inconclusive": 0}
    for _ in range(trials):
        alone = 0.9 + rng.normal(0, 0.01, n)
        combined = alone - (true_drop + rng.normal(0, sigma, n))
        verdict = judge("x", HIGHER, alone.tolist(), combined.tolist(), [0.1] * n)
        counts[verdict.outcome] += 1
    return {k: v / trials for k, v in counts.items()}


def test_simulated_false_alarm_and_power() -> None:
    """No true drop: a false 'dropped' is rare; a true drop of twice the tolerance is found."""
    tol = HIGHER.tolerance
    for n in (3, 5):
        null = simulate(0.0, sigma=tol / 2, n=n, trials=400)
        assert null["dropped"] <= 0.02, null
        power = simulate(2 * tol, sigma=tol / 2, n=n, trials=400)
        assert power["dropped"] >= 0.6, power
        assert power["held"] <= 0.01, power
    assert interval([0.1])[1] != interval([0.1])[1]  # one seed: no bound (NaN)


def test_reports_quote_the_rule_from_the_code() -> None:
    from defcon.effectiveness import CONFIDENCE, verdict_rule

    rule = verdict_rule()
    assert f"{CONFIDENCE:.0%}" in rule and "`CONFIDENCE`" not in rule
    assert rule.count("\n1. **") == 1 and "\n3. **Three outcomes.**" in rule
    for word in ("not_effective_alone", "dropped", "held", "inconclusive", "ineffective"):
        assert word in rule


def test_looks_double_the_seeds_up_to_the_cap_and_spend_the_error_linearly() -> None:
    from defcon.effectiveness import CONFIDENCE, look_confidences, looks

    assert looks(3, 10) == (3, 6, 10) and looks(3, 3) == (3,) and looks(1, 5) == (1, 2, 4, 5)
    assert look_confidences((3,)) == pytest.approx((CONFIDENCE,))
    per_look = look_confidences((3, 6, 10))
    assert per_look == pytest.approx((0.97, 0.97, 0.96))
    assert sum(1 - c for c in per_look) == pytest.approx(1 - CONFIDENCE)  # Bonferroni: α in all
    for bad in ((0, 3), (5, 3)):
        with pytest.raises(ValueError, match="first ≤ most"):
            looks(*bad)
    with pytest.raises(ValueError, match="increasing"):
        look_confidences((6, 3))


def test_a_stricter_look_widens_the_interval_and_is_kept_in_the_verdict() -> None:
    """A drop held at the nominal confidence can be inconclusive at a look's stricter one."""
    alone, none = [0.9, 0.9, 0.9], [0.1, 0.1, 0.1]
    combined = [0.9 - d for d in (0.0, 0.05, 0.07)]  # mean drop 0.04, tolerance 0.1
    nominal = judge("x", HIGHER, alone, combined, none)
    strict = judge("x", HIGHER, alone, combined, none, confidence=0.99)
    assert nominal.outcome == "held" and strict.outcome == "inconclusive"
    assert strict.confidence == 0.99 and strict.drop.upper > nominal.drop.upper


def test_sequential_looks_keep_the_error_at_the_tolerance_within_the_promise() -> None:
    """A true drop exactly at the tolerance: reading after every added seed at the nominal level
    concludes wrongly far more often than 1 − CONFIDENCE per side (optional stopping); the looks
    of rule point 4 do not (benchmarks/verdict_rule.py prints the full tables)."""
    from benchmark_scripts import load_script

    script = load_script("verdict_rule")
    designs = script.designs()
    now = next(d for name, d in designs.items() if name.endswith("(now)"))  # cap 10
    before = next(d for name, d in designs.items() if name.endswith("(before)"))
    tau = script.METRIC.tolerance
    old = script.rates(tau, tau, before, trials=300, seed=0)
    new = script.rates(tau, tau, now, trials=300, seed=0)
    assert old["held"] > 0.17 and old["dropped"] > 0.17, old  # nominal 0.10 each
    assert new["held"] <= 0.13 and new["dropped"] <= 0.13, new  # 0.10 + two binomial SEs


def test_resampling_a_records_drops_shows_when_an_early_look_is_misled() -> None:
    """benchmarks/verdict_rule.py --record: a clear drop is `dropped` and no drop `held` at every
    first look; a skewed drop (rare large seeds) fools a first look of 3 more often than one of 6."""
    from pathlib import Path

    from benchmark_scripts import load_script

    from defcon.planning.records import CompositionRecord

    script = load_script("verdict_rule")
    path = next(Path(__file__).parents[1].glob("benchmarks/results/*/records/adult/*.json"))
    data = json.loads(path.read_text())
    data["max_seeds"] = 20
    rng = np.random.default_rng(0)
    alone = 0.5 + rng.normal(0, 0.001, 20)

    def with_drops(drops: np.ndarray) -> CompositionRecord:
        metric = data["results"][0]["metrics"][0]
        sign = 1.0 if metric["direction"] == "higher" else -1.0
        metric["judged"], metric["tolerance"] = True, 0.05
        metric["alone"]["values"] = alone.tolist()
        metric["combined"]["values"] = (alone - sign * drops).tolist()
        data["results"] = data["results"][:1]
        data["results"][0]["metrics"] = [metric]
        return CompositionRecord.model_validate(data)

    def shares(drops: np.ndarray) -> dict[str, tuple[float, float, float]]:
        rows = script.resampled(with_drops(drops), trials=300)[2:]
        cells = [row.strip("|").split("|") for row in rows]
        return {c[3].strip(): tuple(float(x) for x in c[4:7]) for c in cells}

    clear = shares(0.3 + rng.normal(0, 0.01, 20))
    assert all(dropped > 0.99 for dropped, _, _ in clear.values()), clear
    none = shares(rng.normal(0, 0.01, 20))
    assert all(held > 0.99 for _, held, _ in none.values()), none
    skewed = shares(np.r_[np.abs(rng.normal(0, 0.005, 17)), [0.4, 0.4, 0.4]])  # mean 0.064
    assert skewed["3, 6, 12, 20"][1] > skewed["6, 12, 20"][1] + 0.05, skewed


def test_read_at_looks_measures_up_to_each_look_and_stops_when_decided() -> None:
    """Seeds are measured in order, `decided` is asked only at looks with each look's confidence,
    and the loop stops at the first look that decides (or at the cap)."""
    from defcon.effectiveness import CONFIDENCE, look_plan, read_at_looks

    measured: list[int] = []
    asked: list[tuple[int, float]] = []

    def decide_at(n: int):
        def decided(count: int, confidence: float) -> bool:
            assert count == len(measured)
            asked.append((count, confidence))
            return count >= n

        return decided

    last = read_at_looks(measured.append, decide_at(6), seeds=3, max_seeds=20, seed_start=100)
    assert measured == list(range(100, 106)) and [n for n, _ in asked] == [3, 6]
    assert last == pytest.approx(look_plan(3, 20)[6]) == asked[-1][1]
    measured.clear()
    asked.clear()
    last = read_at_looks(measured.append, decide_at(99), seeds=3, max_seeds=10, seed_start=0)
    assert measured == list(range(10)) and [n for n, _ in asked] == [3, 6, 10]
    assert last == pytest.approx(look_plan(3, 10)[10])
    measured.clear()
    asked.clear()
    assert read_at_looks(measured.append, decide_at(99), seeds=3, max_seeds=3, seed_start=0) == (
        CONFIDENCE
    )
    assert measured == [0, 1, 2]
