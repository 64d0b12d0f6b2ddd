"""Deciding whether a defense stays effective in combination, from per-seed measurements.

For each of a defense's metrics we pair, seed by seed, its value on the defense's standalone model
(`alone`) with its value on the combined model (`combined`) and compute how much worse the
combination is, in the metric's bad direction. The defense is judged to have *dropped* on a metric
only when we are confident the drop exceeds the declared tolerance: the one-sided lower
confidence bound of the mean paired drop (Student t, 90 %, n − 1 degrees of freedom) is above
the tolerance. With one seed there is no variance estimate and the mean drop itself is compared.
A defense stays effective iff it did not drop on any of its metrics; a combination is measured
effective iff every defense stays effective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import stats

from defcon.vocabulary import Direction, Metric

CONFIDENCE = 0.90


class Summary(BaseModel):
    """Mean and sample standard deviation over seeds (std 0 for a single seed)."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        arr = np.asarray(values, dtype=float)
        finite = arr[np.isfinite(arr)]
        if len(finite) == 0:
            return cls(
                mean=float("nan") if len(arr) == 0 else float(arr[0]), std=0.0, values=tuple(arr)
            )
        std = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
        return cls(mean=float(finite.mean()), std=std, values=tuple(float(v) for v in arr))

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}"


class MetricVerdict(BaseModel):
    """One metric of one defense: alone vs combined over seeds, and whether it held."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    defense: str
    metric: str
    direction: Direction
    tolerance: float
    alone: Summary
    combined: Summary
    no_defense: Summary | None = None
    drop: float
    drop_lower_bound: float
    effective: bool


def paired_drop(
    metric: Metric, alone: Sequence[float], combined: Sequence[float]
) -> tuple[float, float]:
    """Mean paired drop (positive = worse in combination) and its one-sided lower confidence bound."""
    if len(alone) != len(combined) or not alone:
        raise ValueError("alone and combined need the same, non-zero number of seeds")
    drops = np.array([metric.worse_by(a, c) for a, c in zip(alone, combined, strict=True)])
    if not np.all(np.isfinite(drops)):
        # e.g. ε = inf: a privacy guarantee lost entirely is an unbounded drop.
        worst = float(np.nanmax(np.where(np.isnan(drops), -np.inf, drops)))
        return worst, worst
    mean = float(drops.mean())
    if len(drops) < 2:
        return mean, mean
    se = float(drops.std(ddof=1)) / math.sqrt(len(drops))
    t = float(stats.t.ppf(CONFIDENCE, df=len(drops) - 1))
    return mean, mean - t * se


def judge(
    defense: str,
    metric: Metric,
    alone: Sequence[float],
    combined: Sequence[float],
    no_defense: Sequence[float] | None = None,
    tolerance: float | None = None,
) -> MetricVerdict:
    """Whether `defense` held on `metric`: not confidently worse than alone by > tolerance."""
    tol = metric.tolerance if tolerance is None else tolerance
    drop, lower = paired_drop(metric, alone, combined)
    return MetricVerdict(
        defense=defense,
        metric=metric.name,
        direction=metric.direction,
        tolerance=tol,
        alone=Summary.of(alone),
        combined=Summary.of(combined),
        no_defense=Summary.of(no_defense) if no_defense else None,
        drop=drop,
        drop_lower_bound=lower,
        effective=not lower > tol,
    )
