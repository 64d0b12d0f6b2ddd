"""How often the verdict rule errs: a simulation of defcon.effectiveness.judge.

Paired drops (alone → combined) are drawn from N(true drop, σ²) over n seeds, with the metric's
tolerance τ; the table prints, per (n, σ/τ), the share of trials judged `dropped`, `held` and
`inconclusive` when there is no true drop (false alarms: 'dropped' must be rare) and when the
true drop is 2τ (power: 'dropped' should dominate, 'held' must be rare). It also shows the
adaptive rule the composer uses (start with 3 seeds, add one while inconclusive, up to 6).

    python benchmarks/verdict_rule.py [--trials 2000]
"""

from __future__ import annotations

import argparse

import numpy as np

from defcon.effectiveness import judge
from defcon.vocabulary import Direction, Metric

METRIC = Metric(name="m", direction=Direction.HIGHER, tolerance=0.05)


def outcome(drops: np.ndarray, rng: np.random.Generator) -> str:
    n = len(drops)
    alone = 0.8 + rng.normal(0, 0.01, n)
    verdict = judge("d", METRIC, alone.tolist(), (alone - drops).tolist(), [0.1] * n)
    return verdict.outcome


def rates(true_drop: float, sigma: float, n: int, trials: int, adaptive_to: int | None, seed: int):
    rng = np.random.default_rng(seed)
    counts = {"dropped": 0, "held": 0, "inconclusive": 0}
    used = 0
    for _ in range(trials):
        drops = true_drop + rng.normal(0, sigma, adaptive_to or n)
        k = n
        result = outcome(drops[:k], rng)
        while adaptive_to and result == "inconclusive" and k < adaptive_to:
            k += 1
            result = outcome(drops[:k], rng)
        counts[result] += 1
        used += k
    return {key: value / trials for key, value in counts.items()}, used / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    tau = METRIC.tolerance
    print(f"tolerance τ = {tau}; {args.trials} trials per cell; confidence 90 % per side\n")
    print("| seeds | σ/τ | true drop | dropped | held | inconclusive | mean seeds used |")
    print("|---|---|---|---|---|---|---|")
    for label, n, adaptive in (("3", 3, None), ("5", 5, None), ("3→6 adaptive", 3, 6)):
        for ratio in (0.25, 0.5, 1.0):
            for true_drop in (0.0, 2 * tau):
                result, used = rates(true_drop, ratio * tau, n, args.trials, adaptive, seed=1)
                print(
                    f"| {label} | {ratio:g} | {true_drop / tau:g}τ | {result['dropped']:.3f} | "
                    f"{result['held']:.3f} | {result['inconclusive']:.3f} | {used:.2f} |"
                )


if __name__ == "__main__":
    main()
