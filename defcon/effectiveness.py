"""Whether a defense stays effective in combination: the verdict rule, from per-seed measurements.

Every defense metric is measured, seed by seed, on three models built under the *same* threat
scenario: no defense, the defense alone, and the combination. Per judged metric:

1. **Effective alone (the gate).** The paired gain g_i (alone vs no defense, in the metric's good
   direction) must be significantly positive (the one-sided lower confidence bound of its mean
   is above 0) and at least the declared tolerance (a gain smaller than what the defense may
   lose could vanish without ever counting as a drop). A metric that fails the gate cannot lose
   effectiveness it never had: it is `not_effective_alone` and takes no part in the verdict.
2. **Tolerance.** The declared tolerance, or half the defense's own mean gain where that is
   smaller, so that losing half of what the defense achieves always counts.
3. **Three outcomes.** The paired drop d_i (alone vs combined, in the bad direction) has a
   two-sided confidence interval [L, U] (Student t, n − 1 degrees of freedom). `dropped` when
   L > tolerance, `held` when U < tolerance, `inconclusive` when the interval straddles it (and
   whenever a value is NaN or there is a single seed).
4. **Seeds added while undecided.** A measurement may add seeds while a verdict is inconclusive,
   up to a cap. It reads its verdicts only at a few looks (the first seeds, then doubling, then
   the cap) and spends the error 1 − `CONFIDENCE` over them in proportion to the seeds each
   look adds (a linear spending function, Lan and DeMets, Biometrika 1983): each side of the look
   at n of N seeds errs with chance at most (1 − `CONFIDENCE`)·(n − n_before)/N. By Bonferroni the
   chance that a true drop at the tolerance ends `dropped` (or `held`) over the whole measurement
   stays within 1 − `CONFIDENCE`. Without extra seeds there is one look, at `CONFIDENCE`.

A defense is `not_effective_alone` when none of its judged metrics passes the gate; otherwise it
`dropped` if one of its gated metrics dropped, is `inconclusive` if none dropped and one is
inconclusive, and `held` otherwise. A combination is `ineffective` if a defense dropped,
`inconclusive` if none dropped and one is inconclusive, `not_effective_alone` if a defense is, and
`effective` otherwise. Only `effective` and `ineffective` labels score prediction techniques.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import stats

from defcon.vocabulary import Direction, Metric

# Per side, per measurement: P(dropped | true drop = tolerance) ≤ 10 %, and the same for held.
CONFIDENCE = 0.90


def looks(first: int, most: int) -> tuple[int, ...]:
    """The seed counts at which a measurement that adds seeds while undecided reads its verdicts:
    `first`, then doubling, ending at `most`. Reading after every added seed would let chance
    decide at whichever look it first crosses a bound (optional stopping); few looks keep the
    correction that prevents it (`look_confidences`) mild."""
    if first < 1 or most < first:
        raise ValueError(f"need 1 ≤ first ≤ most seeds, got first {first}, most {most}")
    counts = [first]
    while counts[-1] < most:
        counts.append(min(most, 2 * counts[-1]))
    return tuple(counts)


def look_confidences(schedule: tuple[int, ...]) -> tuple[float, ...]:
    """Per-side confidence of each look of `schedule` (`looks`): the look at n of N seeds may err
    by α·(n − n_before)/N, α = 1 − CONFIDENCE. The errors sum to α, so by Bonferroni the whole
    measurement errs, per side, with chance at most α, whatever the looks' dependence; one look
    gets CONFIDENCE itself. Linear, not front-light spending (O'Brien–Fleming-like): the first
    look stays usable, and most verdicts are clear at the first seeds."""
    if not schedule or list(schedule) != sorted(set(schedule)) or schedule[0] < 1:
        raise ValueError(f"need increasing seed counts ≥ 1, got {schedule}")
    alpha = 1.0 - CONFIDENCE
    before = [0, *schedule[:-1]]
    return tuple(
        1.0 - alpha * (n - b) / schedule[-1] for n, b in zip(schedule, before, strict=True)
    )


def look_plan(first: int, most: int) -> dict[int, float]:
    """Seed count of each look → its per-side confidence: what a measurement that starts with
    `first` seeds and may add seeds up to `most` judges at (`looks`, `look_confidences`)."""
    schedule = looks(first, most)
    return dict(zip(schedule, look_confidences(schedule), strict=True))


def read_at_looks(
    add_seed: Callable[[int], None],
    decided: Callable[[int, float], bool],
    *,
    seeds: int,
    max_seeds: int,
    seed_start: int,
) -> float:
    """Point 4 as a loop: measure seeds `seed_start`, `seed_start` + 1, … up to the first look,
    ask `decided(seed count, that look's confidence)`, and while it says no and a look remains,
    measure the seeds up to the next look. Returns the confidence of the last look read.

    It lives here, beside the rule, not in the composer: the composer's code keys every cached
    model, so a change to when verdicts are read re-reads cached models instead of retraining
    them (the record's code hash still names this module: `defcon.engine.fingerprint.rule_code`).
    """
    measured = 0
    confidence = CONFIDENCE
    for count, confidence in look_plan(seeds, max_seeds).items():
        for seed in range(seed_start + measured, seed_start + count):
            add_seed(seed)
        measured = count
        if decided(count, confidence):
            break
    return confidence


def verdict_rule() -> str:
    """The rule as this module's docstring states it, on one paragraph per point: reports quote
    it rather than restate it, so the prose cannot drift from the code beside it."""
    text = (__doc__ or "").replace("`CONFIDENCE`", f"{CONFIDENCE:.0%}")
    paragraphs = [" ".join(block.split()) for block in text.split("\n\n")[1:]]
    numbered = [re.sub(r" (\d)\. \*\*", r"\n\1. **", p) for p in paragraphs if p]
    return "\n\n".join(numbered)


Outcome = Literal["held", "dropped", "inconclusive", "not_effective_alone", "diagnostic"]
DefenseOutcome = Literal["held", "dropped", "inconclusive", "not_effective_alone"]
Label = Literal["effective", "ineffective", "inconclusive", "not_effective_alone"]
LABELS: tuple[Label, ...] = ("effective", "ineffective", "inconclusive", "not_effective_alone")
CONCLUSIVE: tuple[Label, ...] = ("effective", "ineffective")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Summary(BaseModel):
    """Mean and sample standard deviation over seeds (std 0 for a single seed).

    Non-finite values (ε = ∞ for a model trained without DP) are kept in `values` as `null`
    in JSON with `infinite` listing their sign, so every field is a number or null.
    """

    model_config = ConfigDict(frozen=True)

    mean: float | None
    std: float | None
    values: tuple[float | None, ...]
    infinite: tuple[int, ...] = ()  # per value: +1 / −1 for ±∞, 0 otherwise (empty: none)

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        arr = np.asarray(values, dtype=float)
        finite = arr[np.isfinite(arr)]
        inf_signs = tuple(int(np.sign(v)) if np.isinf(v) else 0 for v in arr)
        if len(finite) == len(arr) and len(arr):
            mean = float(finite.mean())
            std = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
        elif len(arr) and np.all(np.isinf(arr)) and len(set(inf_signs)) == 1:
            mean, std = float(arr[0]), 0.0
        else:
            mean, std = float("nan"), float("nan")
        return cls(
            mean=_finite_or_none(mean),
            std=_finite_or_none(std),
            values=tuple(_finite_or_none(float(v)) for v in arr),
            infinite=inf_signs if any(inf_signs) else (),
        )

    def raw(self) -> list[float]:
        """The per-seed values as floats (±inf and NaN restored)."""
        out = []
        for i, value in enumerate(self.values):
            sign = self.infinite[i] if self.infinite else 0
            out.append(
                math.copysign(math.inf, sign) if sign else (math.nan if value is None else value)
            )
        return out

    @property
    def center(self) -> float:
        """The mean as a float (±inf when every value is, NaN when undefined)."""
        if self.mean is not None:
            return self.mean
        raw = self.raw()
        if raw and all(math.isinf(v) for v in raw) and len({v > 0 for v in raw}) == 1:
            return raw[0]
        return math.nan

    def __str__(self) -> str:
        center = self.center
        if math.isinf(center):
            return "∞" if center > 0 else "−∞"
        if math.isnan(center):
            return "n/a"
        return f"{center:.3f} ± {self.std or 0.0:.3f}"


class Interval(BaseModel):
    """Mean of paired differences and its two-sided confidence interval (each side at the
    confidence it was judged at: a verdict's look, or CONFIDENCE).

    JSON-safe: an undefined value is null; a bound of ±∞ is kept as ±1e300 so its sign survives.
    """

    model_config = ConfigDict(frozen=True)

    mean: float | None
    lower: float | None
    upper: float | None
    n: int

    @classmethod
    def of(cls, mean: float, lower: float, upper: float, n: int) -> Interval:
        return cls(mean=_finite_or_none(mean), lower=_bound(lower), upper=_bound(upper), n=n)


def interval(
    differences: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(mean, lower, upper) of paired differences, each bound at `confidence` (one side); NaN
    bounds when they cannot be estimated.

    ±∞ differences (a guarantee lost or gained entirely) make the interval that infinity on both
    sides when they all agree in sign; mixed signs or NaN give NaN.
    """
    d = np.asarray(differences, dtype=float)
    if len(d) == 0 or np.any(np.isnan(d)):
        return math.nan, math.nan, math.nan
    if np.any(np.isinf(d)):
        signs = set(np.sign(d[np.isinf(d)]).tolist())
        if len(signs) == 1:
            value = math.copysign(math.inf, signs.pop())
            return value, value, value
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    t = float(stats.t.ppf(confidence, df=len(d) - 1))
    return mean, mean - t * se, mean + t * se


class MetricVerdict(BaseModel):
    """One metric of one defense: no defense, alone and combined over seeds, and the outcome."""

    model_config = ConfigDict(frozen=True)

    defense: str
    metric: str
    direction: Direction
    judged: bool = True
    declared_tolerance: float
    tolerance: float  # the one applied: min(declared, gain / 2)
    no_defense: Summary
    alone: Summary
    combined: Summary
    gain: Interval  # alone vs no defense, positive = the defense helps
    drop: Interval  # alone vs combined, positive = worse in combination
    effective_alone: bool
    outcome: Outcome
    # Per side, at the look that decided (rule point 4); records made before looks existed read
    # every added seed at CONFIDENCE, which is what the default says.
    confidence: float = CONFIDENCE

    @property
    def conclusive(self) -> bool:
        return self.outcome in ("held", "dropped", "diagnostic") or (
            self.outcome == "not_effective_alone" and not self.gate_undecided
        )

    @property
    def gate_undecided(self) -> bool:
        """Not effective alone on these seeds, but the mean gain reaches the tolerance: only its
        significance is missing, and more seeds may tell."""
        return (
            self.judged
            and not self.effective_alone
            and self.gain.mean is not None
            and self.gain.mean > 0
            and self.gain.mean >= self.declared_tolerance
            and self.gain.n >= 2
        )


def _worse_by(metric: Metric, reference: float, other: float) -> float:
    """How much worse `other` is than `reference` in the metric's bad direction (inf-safe)."""
    if math.isinf(reference) and math.isinf(other) and (reference > 0) == (other > 0):
        return 0.0
    return metric.worse_by(reference, other)


def judge(
    defense: str,
    metric: Metric,
    alone: Sequence[float],
    combined: Sequence[float],
    no_defense: Sequence[float],
    tolerance: float | None = None,
    confidence: float = CONFIDENCE,
) -> MetricVerdict:
    """The outcome of `defense` on `metric` (see the module docstring for the rule); each bound
    at `confidence` per side (`look_confidences` of the measurement's looks)."""
    if not (len(alone) == len(combined) == len(no_defense)) or not alone:
        raise ValueError("no defense, alone and combined need the same, non-zero number of seeds")
    declared = metric.tolerance if tolerance is None else tolerance
    if not math.isfinite(declared) or declared < 0:
        raise ValueError(f"tolerance of {metric.name} must be a finite number ≥ 0, got {declared}")
    gains = [_worse_by(metric, a, n) for a, n in zip(alone, no_defense, strict=True)]
    gain_mean, gain_lower, gain_upper = interval(gains, confidence)
    significant = (
        bool(gain_mean > 0)
        if len(gains) == 1
        else bool(not math.isnan(gain_lower) and gain_lower > 0)
    )
    # and large enough to lose: a gain below the tolerance could vanish without ever counting
    effective_alone = significant and bool(gain_mean >= declared)
    used = declared
    if effective_alone and math.isfinite(gain_mean):
        used = min(declared, gain_mean / 2)
    drops = [_worse_by(metric, a, c) for a, c in zip(alone, combined, strict=True)]
    drop_mean, drop_lower, drop_upper = interval(drops, confidence)
    if not metric.judged:
        outcome: Outcome = "diagnostic"
    elif not effective_alone:
        outcome = "not_effective_alone"
    elif not math.isnan(drop_lower) and drop_lower > used:
        outcome = "dropped"
    elif not math.isnan(drop_upper) and drop_upper < used:
        outcome = "held"
    else:
        outcome = "inconclusive"
    return MetricVerdict(
        defense=defense,
        metric=metric.name,
        direction=metric.direction,
        judged=metric.judged,
        declared_tolerance=declared,
        tolerance=used,
        no_defense=Summary.of(no_defense),
        alone=Summary.of(alone),
        combined=Summary.of(combined),
        gain=Interval.of(gain_mean, gain_lower, gain_upper, len(gains)),
        drop=Interval.of(drop_mean, drop_lower, drop_upper, len(drops)),
        effective_alone=effective_alone,
        outcome=outcome,
        confidence=confidence,
    )


def _bound(value: float) -> float | None:
    """JSON-safe bound: NaN → null; ±∞ clipped to ±1e300 so the sign survives."""
    if math.isnan(value):
        return None
    if math.isinf(value):
        return math.copysign(1e300, value)
    return value


def defense_outcome(verdicts: Sequence[MetricVerdict]) -> DefenseOutcome:
    """held / dropped / inconclusive / not_effective_alone from a defense's metric verdicts."""
    gated = [v for v in verdicts if v.judged and v.effective_alone]
    if not gated:
        return "not_effective_alone"
    if any(v.outcome == "dropped" for v in gated):
        return "dropped"
    if any(v.outcome == "inconclusive" for v in gated):
        return "inconclusive"
    return "held"


def combination_label(outcomes: Sequence[DefenseOutcome]) -> Label:
    """The combination's label from its defenses' outcomes (exactly one of LABELS)."""
    if "dropped" in outcomes:
        return "ineffective"
    if "inconclusive" in outcomes:
        return "inconclusive"
    if "not_effective_alone" in outcomes:
        return "not_effective_alone"
    return "effective"
