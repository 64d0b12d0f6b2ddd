"""Membership inference (offline RMIA): undefended vs dp_sgd in the profile's membership regime.

Every arm trains with the profile's `membership` regime for the dataset (fewer records, more
epochs: the literature's leaky setting), as any run measuring membership does. Reports AUC and
TPR at 0.1 % / 1 % FPR (thresholds set on validation records) per dataset, mean ± 95 % CI
(Student t over seeds).

python benchmarks/membership.py --datasets adult,fmnist --seeds 3
    # writes benchmarks/results/membership/summary.{md,json}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from scipy import stats

from defcon.effectiveness import Summary
from defcon.errors import DefconError
from defcon.measure.composer import Composer
from defcon.measure.standalone import measure_standalone
from defcon.planning.profiles import PROFILES
from defcon.storage import atomic_write_text

ROOT = Path(__file__).resolve().parent
METRICS = ("mia_auc", "mia_tpr_at_0_1_fpr", "mia_tpr_at_1_fpr")
DEFENSE = "dp_sgd"


def interval(summary: Summary) -> tuple[float, float]:
    """(mean, half-width of the 95 % Student-t interval; 0 for one seed)."""
    values = [v for v in summary.raw() if math.isfinite(v)]
    mean = sum(values) / len(values)
    if len(values) < 2 or summary.std is None:
        return mean, 0.0
    t = float(stats.t.ppf(0.975, df=len(values) - 1))
    return mean, t * summary.std / math.sqrt(len(values))


def cell(summary: Summary) -> str:
    mean, half = interval(summary)
    return f"{mean:.3f} ± {half:.3f}"


def measure(
    dataset: str, profile: str, seeds: int, cache: str, first_seed: int = 0
) -> dict[str, object]:
    composer = Composer(dataset, profile=profile, cache_dir=cache)
    result = measure_standalone(composer, DEFENSE, seeds, first_seed)
    regime = composer.profile.membership.get(dataset)
    row: dict[str, object] = {
        "dataset": dataset,
        "regime": regime.model_dump() if regime else None,
        "seeds": seeds,
        "first_seed": first_seed,
        "wall_time_s": result.wall_time_s,
    }
    arms = {"undefended": 0, DEFENSE: 1}
    for arm, index in arms.items():
        readings = {m: result.metrics[m][index] for m in METRICS}
        readings["clean_accuracy"] = result.clean_accuracy[index]
        row[arm] = {
            name: {"mean": interval(s)[0], "ci95": interval(s)[1], "values": s.raw()}
            for name, s in readings.items()
        }
    return row


def roc_curves(dataset: str, profile: str, cache: str, seed: int = 0) -> dict[str, list]:
    """Seed `seed`'s RMIA ROC points per arm, read from the cached models of `measure`."""
    composer = Composer(dataset, profile=profile, cache_dir=cache)
    defense = composer.defense(DEFENSE)
    curves = {}
    with composer.membership_regime(True):
        for arm, names in (("undefended", []), (DEFENSE, [DEFENSE])):
            result = composer.runner.run_pipeline(composer.pipeline(names, seed, False))
            curves[arm] = defense.membership_reading(result.model, result.env).roc
    return curves


def plot_roc(curves: dict[str, dict[str, list]], path: Path, seed: int = 0) -> None:
    """Log-log ROC per dataset (the low-FPR region is where membership matters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from defcon.report.reports import save_figure

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4), squeeze=False)
    for ax, (dataset, arms) in zip(axes[0], curves.items(), strict=True):
        for arm, points in arms.items():
            fpr, tpr = zip(*[(f, t) for f, t in points if f > 0 and t > 0], strict=True)
            ax.loglog(fpr, tpr, label=arm)
        ax.loglog([1e-3, 1], [1e-3, 1], "k:", linewidth=0.8, label="chance")
        ax.set(xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false positive rate",
               ylabel="true positive rate", title=f"RMIA on {dataset} (seed {seed})")  # fmt: skip
        ax.legend(fontsize=8)
    save_figure(fig, path)


def markdown(
    rows: list[dict[str, object]], profile: str, seeds: int, wall: float, first_seed: int = 0
) -> str:
    lines = [
        "# Membership inference: undefended vs dp_sgd (offline RMIA)",
        "",
        "| dataset | regime | arm | AUC | TPR @ 0.1 % FPR | TPR @ 1 % FPR | clean accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        regime = row["regime"]
        label = f"{regime['max_train']} records, {regime['epochs']} epochs" if regime else "profile"
        for arm in ("undefended", DEFENSE):
            values = row[arm]
            assert isinstance(values, dict)
            cells = [
                f"{values[m]['mean']:.3f} ± {values[m]['ci95']:.3f}"
                for m in (*METRICS, "clean_accuracy")
            ]
            lines.append(f"| {row['dataset']} | {label} | {arm} | {' | '.join(cells)} |")
    lines += [
        "",
        f"Profile `{profile}`, seeds {first_seed}–{first_seed + seeds - 1}, "
        "mean ± 95 % CI (Student t over seeds); "
        "dp_sgd with its catalog defaults; members are training records, non-members test "
        "records, thresholds set on validation records neither the target nor a reference saw. "
        f"Total wall time {wall:.0f} s (2 CPU threads shared). Produced by "
        f"`python benchmarks/membership.py --datasets "
        f"{','.join(str(r['dataset']) for r in rows)} --seeds {seeds} --seed-start {first_seed}`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="adult,fmnist")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--seed-start", type=int, default=0, help="first seed (1000: the repeat set)"
    )
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cache", default=str(ROOT.parent / ".defcon-cache"))
    parser.add_argument("--out", default=str(ROOT / "results" / "membership"))
    args = parser.parse_args()
    if args.profile not in PROFILES:
        parser.error(f"--profile: unknown '{args.profile}', one of {', '.join(PROFILES)}")
    if args.seeds < 1:
        parser.error(f"--seeds: at least 1, got {args.seeds}")
    os.environ.setdefault("DEFCON_PROGRESS", "0")
    started = time.perf_counter()
    rows = []
    try:
        for dataset in args.datasets.split(","):
            rows.append(measure(dataset, args.profile, args.seeds, args.cache, args.seed_start))
            print(json.dumps(rows[-1]), flush=True)
    except DefconError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    wall = time.perf_counter() - started
    out = Path(args.out)
    atomic_write_text(out / "summary.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(
        out / "summary.md", markdown(rows, args.profile, args.seeds, wall, args.seed_start)
    )
    curves = {
        d: roc_curves(d, args.profile, args.cache, args.seed_start)
        for d in args.datasets.split(",")
    }
    plot_roc(curves, out / "roc.png", args.seed_start)
    print(markdown(rows, args.profile, args.seeds, wall, args.seed_start))


if __name__ == "__main__":
    main()
