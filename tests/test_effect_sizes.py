"""Effect sizes and coverage: the audit calls a tiny change "no change" whatever its p-value;
coverage, reproducible share and the bootstrap interval of a balanced accuracy on constructed
records."""

from __future__ import annotations

import numpy as np
import pytest
from test_scoring import record

from defcon.audit.auditor import judge_change, risk_change
from defcon.bench.results import coverage, stability
from defcon.report.scoring import balanced_accuracy_interval, score
from defcon.risks import ATTACKS, RiskMetric
from defcon.vocabulary import Direction

AUC = RiskMetric(name="auc", riskier=Direction.HIGHER, min_effect=0.02, description="an AUC")


def test_a_tiny_significant_change_is_no_change() -> None:
    tiny = [0.0010, 0.0011, 0.0012, 0.0011, 0.0010]  # interval far from 0, mean ≈ 0.001
    change, moved = judge_change(AUC, tiny)
    assert change.lower is not None and change.lower > 0  # significant
    assert moved == "none"
    assert risk_change(Direction.HIGHER, change.lower, change.upper) == "up"  # without a size
    # the same spread shifted past the practical size is a change, in the risk's direction
    assert judge_change(AUC, [d + 0.03 for d in tiny])[1] == "up"
    assert judge_change(AUC, [-d - 0.03 for d in tiny])[1] == "down"
    robust = RiskMetric(name="acc", riskier=Direction.LOWER, min_effect=0.05, description="")
    assert judge_change(robust, [-0.06, -0.07, -0.065])[1] == "up"  # accuracy fell: more risk
    assert judge_change(robust, [-0.04, -0.041, -0.042])[1] == "none"
    # a large but noisy change is still not told apart
    assert judge_change(AUC, [0.3, -0.2, 0.25])[1] == "none"


def test_every_directed_risk_metric_declares_its_size() -> None:
    for attack in ATTACKS.values():
        for metric in attack.metrics:
            assert (metric.min_effect is not None) == (metric.riskier is not None), metric.name
    with pytest.raises(ValueError, match="min_effect"):
        RiskMetric(name="x", riskier=Direction.HIGHER, description="no size")


GUESS = {"defcon": "effective", "naive": "ineffective"}


def test_coverage_and_reproducible_share_on_constructed_records() -> None:
    # labels: ineffective (True), effective (False), inconclusive (None)
    first = [
        record(("a", "b"), True, GUESS),  # reproduced
        record(("a", "c"), False, GUESS),  # reproduced
        record(("a", "d"), None, GUESS),  # conclusive on the repeat only
        record(("a", "e"), True, GUESS),  # flips
        record(("a", "f"), None, GUESS),  # inconclusive in both: not counted
    ]
    again = (9, 10, 11)
    second = [
        record(("a", "b"), True, GUESS, seeds=again),
        record(("a", "c"), False, GUESS, seeds=again),
        record(("a", "d"), False, GUESS, seeds=again),
        record(("a", "e"), False, GUESS, seeds=again),
        record(("a", "f"), None, GUESS, seeds=again),
    ]
    cover = coverage(first)
    assert cover["all"] == {"measured": 5, "conclusive": 3, "coverage": pytest.approx(0.6)}
    assert cover["digits"]["coverage"] == pytest.approx(0.6)
    st = stability(first, second)
    assert st["conclusive_in_either"] == 4
    assert st["reproduced"] == 2
    assert st["reproducible_share"] == pytest.approx(0.5)
    assert st["label_flip_rate"] == pytest.approx(1 / 3)  # the looser count, for comparison
    # why ("a", "d") reproduced on one seed set only: the first run's inconclusive drop
    (changed,) = st["changed_conclusiveness"]
    (why,) = changed["why"]
    assert why.startswith("a.") and "drop" in why and "vs tolerance" in why and "3 seeds" in why
    assert st["not_reproduced_by"] == {"a": 1}
    assert stability(first, [])["reproducible_share"] is None
    assert coverage([]) == {}


def test_bootstrap_interval_is_deterministic_and_contains_the_estimate() -> None:
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(3)
    measured = list(rng.choice(["effective", "ineffective"], 40))
    predicted = [m if rng.random() < 0.75 else "effective" for m in measured]
    point = balanced_accuracy_score(measured, predicted)
    first = balanced_accuracy_interval(measured, predicted)
    assert first == balanced_accuracy_interval(measured, predicted)  # same input, same interval
    assert first is not None and first[0] <= point <= first[1]
    assert first[1] - first[0] > 0.05  # 40 labels leave real uncertainty
    assert balanced_accuracy_interval([], []) is None
    # every label right (or wrong): every resample scores 1 (or 0), as scikit-learn would
    assert balanced_accuracy_interval(measured, measured) == (1.0, 1.0)
    flipped = ["effective" if m == "ineffective" else "ineffective" for m in measured]
    assert balanced_accuracy_interval(measured, flipped) == (0.0, 0.0)
    records = [record(("a", x), x in "bc", GUESS) for x in "bcdefg"]
    scored = score("defcon", records)
    assert scored.balanced_accuracy_ci is not None
    lower, upper = scored.balanced_accuracy_ci
    assert lower <= scored.balanced_accuracy <= upper


def test_distribution_inference_runs_only_when_named(make_env) -> None:
    from defcon.audit.auditor import select_attacks
    from defcon.risks.distribution import DistributionConfig

    assert DistributionConfig().victims >= 100  # Suri & Evans: on the order of 100 per ratio
    dataset = make_env("adult").dataset
    chosen, skipped = select_attacks(dataset, None)
    assert "distribution_inference" not in {a.risk.value for a in chosen}
    assert "measured only when named" in skipped["distribution_inference"]
    assert "100 victims" in skipped["distribution_inference"]
    named, _ = select_attacks(dataset, ["distribution_inference"])
    assert [a.risk.value for a in named] == ["distribution_inference"]
