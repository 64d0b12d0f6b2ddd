"""How well each prediction technique agrees with measured labels.

'ineffective' (a conflict) is the positive class of the confusion matrix: a technique exists to
warn about conflicts, so a missed conflict (false negative) is the costly error. Only conclusive
labels score a technique: a combination measured `inconclusive` (the seeds cannot tell) or
`not_effective_alone` (a defense had nothing to lose) is counted and reported, never scored.
Every balanced accuracy comes with a seeded bootstrap 95 % interval over the scored combinations,
so a reader sees how much a score rests on a few labels (same records → same interval).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from defcon.effectiveness import MetricVerdict
from defcon.planning.records import CompositionRecord, DefenseResult

LABELS = ("effective", "ineffective")
RESAMPLES = 2000  # bootstrap resamples per balanced accuracy
BOOTSTRAP_SEED = 0  # fixed: the same records always give the same interval


class Miss(BaseModel):
    """A combination a technique labelled wrongly, with the measured evidence."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    combination: tuple[str, ...]
    predicted: str
    measured: str
    evidence: str


class TechniqueScore(BaseModel):
    """Agreement of one technique's predictions with the measured labels."""

    model_config = ConfigDict(frozen=True)

    technique: str
    n: int
    accuracy: float | None  # None: no conclusive combination to score
    balanced_accuracy: float | None
    # bootstrap 95 % percentile interval of the balanced accuracy (None: nothing scored)
    balanced_accuracy_ci: tuple[float, float] | None = None
    confusion: dict[str, dict[str, int]]  # measured label → predicted label → count
    misses: tuple[Miss, ...]
    # Abstention: the scored combinations where the technique did not report `uncertain`
    # (defaults keep scores stored before abstention loadable).
    decided: int | None = None
    coverage: float | None = None  # decided / n (None: nothing scored)
    decided_accuracy: float | None = None
    decided_balanced_accuracy: float | None = None


def balanced_accuracy_interval(
    measured: Sequence[str],
    predicted: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the balanced accuracy over combinations (resampled with
    replacement). Balanced accuracy is the mean recall over the measured classes present in a
    resample, as scikit-learn computes it; None when there is nothing to resample."""
    if len(measured) != len(predicted):
        raise ValueError("measured and predicted labels differ in length")
    if not measured:
        return None
    positive = np.asarray([m == "ineffective" for m in measured])
    right = np.asarray([m == p for m, p in zip(measured, predicted, strict=True)])
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(measured), size=(resamples, len(measured)))
    pos, hit = positive[rows], right[rows]
    recalls = []
    for members in (pos, ~pos):
        count = members.sum(1)
        recall = np.where(count > 0, (hit & members).sum(1) / np.maximum(count, 1), np.nan)
        recalls.append(recall)
    balanced = np.nanmean(np.stack(recalls), axis=0)  # each resample has at least one class
    tail = (1 - level) / 2 * 100
    lower, upper = np.percentile(balanced, [tail, 100 - tail])
    return float(lower), float(upper)


def interval_text(bounds: tuple[float, float] | None) -> str:
    """A bootstrap interval as [lower, upper] with two decimals, or empty where undefined."""
    return "" if bounds is None else f" [{bounds[0]:.2f}, {bounds[1]:.2f}]"


def signed(value: float | None) -> str:
    """A signed three-decimal number, or n/a where it is undefined."""
    return "n/a" if value is None else f"{value:+.3f}"


def score_text(value: float | None) -> str:
    """An accuracy with two decimals, or n/a where there was nothing to score."""
    return "n/a" if value is None else f"{value:.2f}"


_RANK = {"dropped": 0, "inconclusive": 1, "not_effective_alone": 2}


def deciding_verdicts(record: CompositionRecord) -> list[tuple[DefenseResult, MetricVerdict]]:
    """The metrics that made the label what it is: dropped, then inconclusive, then not
    effective alone (a metric gated out of a defense its other metrics judge is noise here)."""
    shown = [
        (result, verdict)
        for result in record.results
        for verdict in result.metrics
        if verdict.outcome in _RANK
        and not (
            verdict.outcome == "not_effective_alone" and result.outcome != "not_effective_alone"
        )
    ]
    return sorted(shown, key=lambda item: _RANK[item[1].outcome])


def evidence_of(result: DefenseResult, verdict: MetricVerdict) -> str:
    """One metric's outcome with its three arms, drop interval, tolerance and gain."""
    return (
        f"{result.defense}.{verdict.metric} {verdict.outcome}: none "
        f"{verdict.no_defense} / alone {verdict.alone} → combined {verdict.combined} "
        f"(drop {signed(verdict.drop.mean)}, interval [{signed(verdict.drop.lower)}, "
        f"{signed(verdict.drop.upper)}] vs tolerance {verdict.tolerance:.3g}; "
        f"gain alone {signed(verdict.gain.mean)})"
    )


def evidence(record: CompositionRecord) -> str:
    """Which defenses dropped (or held), by how much, against which tolerance."""
    parts = [evidence_of(result, verdict) for result, verdict in deciding_verdicts(record)]
    if parts:
        return "; ".join(parts)
    judged = [v for r in record.results for v in r.metrics if v.outcome == "held"]
    if not judged:
        return "no judged metric"
    worst = max(judged, key=lambda v: (v.drop.upper or 0.0) - v.tolerance)
    return (
        f"every defense held; closest: {worst.defense}.{worst.metric} drop "
        f"{signed(worst.drop.mean)} (upper bound {signed(worst.drop.upper)} < tolerance "
        f"{worst.tolerance:.3g})"
    )


def score(technique: str, records: Sequence[CompositionRecord]) -> TechniqueScore:
    """Accuracy, balanced accuracy, confusion matrix and misses of `technique` on the
    conclusively labelled `records` that hold its prediction (the others are not scored; the
    bench recomputes every technique's prediction for built-in defenses, see `repredicted`).
    Scored twice: on every label with the technique's lean where it abstained, and on the
    combinations it decided (`decided_*`), with its coverage (the share it decided)."""
    from sklearn.metrics import accuracy_score, confusion_matrix

    records = [r for r in records if r.conclusive and technique in r.predicted]
    measured = [record.label for record in records]
    predicted = [record.predicted[technique] for record in records]
    matrix = confusion_matrix(measured, predicted, labels=list(LABELS)) if records else None
    confusion = {
        m: {p: int(matrix[i, j]) if matrix is not None else 0 for j, p in enumerate(LABELS)}
        for i, m in enumerate(LABELS)
    }
    misses = tuple(
        Miss(
            dataset=record.dataset,
            combination=record.order,
            predicted=guess,
            measured=record.label,
            evidence=evidence(record),
        )
        for record, guess in zip(records, predicted, strict=True)
        if guess != record.label
    )
    kept = [i for i, record in enumerate(records) if technique not in record.abstained]
    kept_measured = [measured[i] for i in kept]
    kept_predicted = [predicted[i] for i in kept]
    return TechniqueScore(
        technique=technique,
        n=len(records),
        accuracy=float(accuracy_score(measured, predicted)) if records else None,
        balanced_accuracy=balanced_accuracy(measured, predicted),
        balanced_accuracy_ci=balanced_accuracy_interval(measured, predicted),
        confusion=confusion,
        misses=misses,
        decided=len(kept),
        coverage=len(kept) / len(records) if records else None,
        decided_accuracy=float(accuracy_score(kept_measured, kept_predicted)) if kept else None,
        decided_balanced_accuracy=balanced_accuracy(kept_measured, kept_predicted),
    )


def balanced_accuracy(measured: Sequence[str], predicted: Sequence[str]) -> float | None:
    """Mean recall over the measured classes present (scikit-learn's), None when empty."""
    from sklearn.metrics import balanced_accuracy_score

    if not measured:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one measured class only: sklearn warns, value is defined
        return float(balanced_accuracy_score(measured, predicted))
