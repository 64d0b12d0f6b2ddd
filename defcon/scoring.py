"""How well each prediction technique agrees with measured labels.

'ineffective' (a conflict) is the positive class of the confusion matrix: a technique exists to
warn about conflicts, so a missed conflict (false negative) is the costly error.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from defcon.records import CompositionRecord

LABELS = ("effective", "ineffective")


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
    accuracy: float
    balanced_accuracy: float
    confusion: dict[str, dict[str, int]]  # measured label → predicted label → count
    misses: tuple[Miss, ...]


def evidence(record: CompositionRecord) -> str:
    """Which defenses dropped (or held), by how much, against which tolerance."""
    parts = []
    for result in record.results:
        for verdict in result.metrics:
            if not verdict.effective:
                parts.append(
                    f"{result.defense}.{verdict.metric} {verdict.alone.mean:.3f} → "
                    f"{verdict.combined.mean:.3f} (drop {verdict.drop:+.3f}, lower bound "
                    f"{verdict.drop_lower_bound:+.3f} > tolerance {verdict.tolerance:g})"
                )
    if parts:
        return "; ".join(parts)
    worst = max((v for r in record.results for v in r.metrics), key=lambda v: v.drop - v.tolerance)
    return (
        f"every defense held; closest: {worst.defense}.{worst.metric} drop {worst.drop:+.3f} "
        f"(lower bound {worst.drop_lower_bound:+.3f} ≤ tolerance {worst.tolerance:g})"
    )


def score(technique: str, records: Sequence[CompositionRecord]) -> TechniqueScore:
    """Accuracy, balanced accuracy, confusion matrix and misses of `technique` on `records`."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

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
    nan = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one measured class only: sklearn warns, value is defined
        balanced = float(balanced_accuracy_score(measured, predicted)) if records else nan
    return TechniqueScore(
        technique=technique,
        n=len(records),
        accuracy=float(accuracy_score(measured, predicted)) if records else nan,
        balanced_accuracy=balanced,
        confusion=confusion,
        misses=misses,
    )
