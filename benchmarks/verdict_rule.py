"""How often the verdict rule errs: a simulation of defcon.effectiveness.judge.

Paired drops (alone → combined) are drawn from N(true drop, σ²) per seed, with the metric's
tolerance τ, and judged by the rule itself. Two tables:

1. Per design and σ/τ, the share of trials judged `dropped`, `held` and `inconclusive` with no
   true drop (false alarms: 'dropped' must be rare) and with a true drop of 2τ (power).
2. A true drop exactly at the tolerance, where `held` and `dropped` are both wrong and the rule
   promises each at most 1 − CONFIDENCE: adding seeds while undecided and reading after every
   one at the nominal confidence (the rule before its looks) breaks the promise; the looks of
   rule point 4 keep it, with a cap of 10 or 20 seeds. The last column pairs independent
   measurements (two seed sets) and gives the share that agree on a conclusive outcome among
   those conclusive in either, as the benchmark's `reproducible_share` counts.

The designs: 3, 5 or 10 seeds with one look (`compose`'s default is 3), and 3 seeds plus seeds
added while undecided up to 10 or 20, as `defcon bench --seeds 3 --max-seeds 10` (or 20) does.

Normal drops flatter a rule built on the t-interval. `--record RECORD` adds a third table for
real spreads: each judged metric's per-seed paired drops in a composition record are resampled
with replacement (the measured distribution, skew and all, taken as the truth) and judged with
looks from a first look of 3 to 6 seeds up to the record's cap, so one can read how often a
measured spread misleads an early look, and whether waiting longer would help.

    python benchmarks/verdict_rule.py [--trials 2000] [--record RECORD]  # about a minute, 1 core
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from defcon.effectiveness import CONFIDENCE, judge, look_confidences, looks
from defcon.planning.records import CompositionRecord
from defcon.vocabulary import Direction, Metric

METRIC = Metric(name="m", direction=Direction.HIGHER, tolerance=0.05)
FIRST, MOST = 3, 10
OUTCOMES = ("dropped", "held", "inconclusive")

Design = tuple[tuple[int, ...], tuple[float, ...]]  # the seed counts read, each one's confidence


def designs() -> dict[str, Design]:
    """Name → design: one look at 3, 5 or 10 seeds, rule point 4's looks up to 10 and 20 seeds,
    and the rule before them (the last two are the test's 'now' and 'before')."""
    schedule = looks(FIRST, MOST)
    every = tuple(range(FIRST, MOST + 1))
    shown = ", ".join(f"{c:.0%}" for c in look_confidences(schedule))
    wide = looks(FIRST, 2 * MOST)
    shown_wide = ", ".join(f"{c:.1%}" for c in look_confidences(wide))
    return {
        "3": ((3,), (CONFIDENCE,)),
        "5": ((5,), (CONFIDENCE,)),
        f"{MOST}": ((MOST,), (CONFIDENCE,)),
        f"looks {', '.join(map(str, schedule))} at {shown} (now)": (
            schedule,
            look_confidences(schedule),
        ),
        f"looks {', '.join(map(str, wide))} at {shown_wide} (now, cap {2 * MOST})": (
            wide,
            look_confidences(wide),
        ),
        f"every seed {FIRST}…{MOST} at {CONFIDENCE:.0%} (before)": (
            every,
            (CONFIDENCE,) * len(every),
        ),
    }


def outcome(drops: np.ndarray, design: Design, rng: np.random.Generator) -> tuple[str, int]:
    """The outcome of one measurement of these per-seed drops, and the seeds it used."""
    result, n = "inconclusive", 0
    alone = 0.8 + rng.normal(0, 0.01, len(drops))
    for n, confidence in zip(*design, strict=True):
        verdict = judge(
            "d", METRIC, alone[:n].tolist(), (alone - drops)[:n].tolist(), [0.1] * n,
            confidence=confidence,
        )  # fmt: skip
        result = verdict.outcome
        if result != "inconclusive":
            break
    return result, n


def rates(
    true_drop: float, sigma: float, design: Design, trials: int, seed: int
) -> dict[str, float]:
    """Shares of outcomes, mean seeds, and the reproducible share of pairs of measurements."""
    rng = np.random.default_rng(seed)
    runs = [
        outcome(true_drop + rng.normal(0, sigma, max(design[0])), design, rng)
        for _ in range(2 * trials)
    ]
    first, second = runs[:trials], runs[trials:]
    pairs = [(a, b) for (a, _), (b, _) in zip(first, second, strict=True)]
    either = [(a, b) for a, b in pairs if (a, b) != ("inconclusive", "inconclusive")]
    return {
        **{o: sum(r == o for r, _ in first) / trials for o in OUTCOMES},
        "seeds": float(np.mean([n for _, n in first])),
        "reproducible": sum(a == b for a, b in either) / len(either) if either else float("nan"),
    }


def table(rows: Sequence[tuple[str, float, float]], trials: int) -> list[str]:
    """Markdown rows for (design, σ/τ, true drop in τ)."""
    tau = METRIC.tolerance
    by_name = designs()
    lines = [
        "| seeds | σ/τ | true drop | dropped | held | inconclusive | mean seeds used "
        "| reproducible share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ratio, drop in rows:
        r = rates(drop * tau, ratio * tau, by_name[name], trials, seed=1)
        lines.append(
            f"| {name} | {ratio:g} | {drop:g}τ | {r['dropped']:.3f} | {r['held']:.3f} | "
            f"{r['inconclusive']:.3f} | {r['seeds']:.2f} | {r['reproducible']:.2f} |"
        )
    return lines


def resampled(
    record: CompositionRecord, trials: int, firsts: Sequence[int] = (3, 4, 5, 6)
) -> list[str]:
    """Markdown rows: per judged metric of the record and first look, the outcome shares when
    the record's own per-seed paired drops (combined against alone) are the truth."""
    most = max(record.max_seeds, len(record.seeds))
    lines = [
        "| defense.metric | measured drop (mean over seeds) | tolerance | looks | dropped | held "
        "| inconclusive |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in record.results:
        for verdict in result.metrics:
            if not verdict.judged or verdict.tolerance is None:
                continue
            sign = 1.0 if verdict.direction == Direction.HIGHER else -1.0
            alone = np.asarray(verdict.alone.values, dtype=float)
            drops = sign * (alone - np.asarray(verdict.combined.values, dtype=float))
            metric = Metric(name=verdict.metric, direction=Direction.HIGHER,
                            tolerance=verdict.tolerance)  # fmt: skip
            for first in firsts:
                if first > most:
                    continue
                design = (looks(first, most), look_confidences(looks(first, most)))
                rng = np.random.default_rng(first)
                counts = dict.fromkeys(OUTCOMES, 0)
                for _ in range(trials):
                    drawn = rng.choice(drops, size=most, replace=True)
                    result_of = "inconclusive"
                    for n, confidence in zip(*design, strict=True):
                        result_of = judge(
                            "d", metric, [1.0] * n, (1.0 - drawn[:n]).tolist(), [0.0] * n,
                            confidence=confidence,
                        ).outcome  # fmt: skip
                        if result_of != "inconclusive":
                            break
                    counts[result_of] += 1
                lines.append(
                    f"| {verdict.defense}.{verdict.metric} | {drops.mean():.3g} "
                    f"({len(drops)} seeds) | {verdict.tolerance:g} "
                    f"| {', '.join(map(str, design[0]))} | {counts['dropped'] / trials:.3f} "
                    f"| {counts['held'] / trials:.3f} | {counts['inconclusive'] / trials:.3f} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--record", help="a composition record whose per-seed drops to resample")
    args = parser.parse_args()
    started = time.perf_counter()
    names = list(designs())
    print(f"tolerance τ = {METRIC.tolerance}; {args.trials} trials per cell; "
          f"{CONFIDENCE:.0%} per side per measurement\n")  # fmt: skip
    print("No true drop (false alarms) and a true drop of 2τ (power):\n")
    fixed = [(n, r, d) for n in names[:2] + names[3:5] for r in (0.25, 0.5, 1.0) for d in (0, 2)]
    print("\n".join(table(fixed, args.trials)))
    print("\nA true drop at the tolerance (held and dropped are both wrong; promised ≤ "
          f"{1 - CONFIDENCE:.0%} each; the same for every σ, as the rule is scale-free there):\n")  # fmt: skip
    print("\n".join(table([(n, 1.0, 1) for n in names[2:]], args.trials)))
    if args.record:
        record = CompositionRecord.model_validate_json(Path(args.record).read_text())
        print(f"\nResampling the per-seed drops of {args.record} (the measured spread as the "
              "truth; the right verdict is the measured mean's side of the tolerance):\n")  # fmt: skip
        print("\n".join(resampled(record, args.trials)))
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
