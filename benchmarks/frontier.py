"""The robustness–privacy frontier: DP-SGD at several noise levels, composed with randomized
smoothing (certified accuracy) and with adversarial training (robust accuracy), issue 14.

For each dataset, each robustness defense R and each DP-SGD noise multiplier σ_DP, the composer
measures dp_sgd (σ_DP) + R over seeds (`Composer.compose`, forced: the frontier is measured
whatever a technique predicts), which gives the ε spent, R's metric and the clean accuracy of the
combined model, plus R alone (no DP, ε = ∞) and no defense. Beside them, R's metric on dp_sgd
alone at the same σ_DP (what DP-SGD gives without R). Writes OUT/frontier.json, OUT/frontier.md
and OUT/frontier.png (x: ε per person, log scale; y: certified / robust accuracy, and clean
accuracy in a panel beside it), one composition record per point under OUT/records.

Resumable: a point whose record (and its dp_sgd-alone readings, RECORD.dp_alone.json) exists is
read back, not re-measured, without even loading the dataset; models and measurements
come from the composer cache (--cache), shared with compose and bench, so an interrupted run
resumes inside a point too. All files are written atomically.

    python benchmarks/frontier.py --datasets fmnist,adult --noise 0.5,1,2,4 --seeds 3 \
        --cache .defcon-cache

On fmnist and adult only after the prospective predictions (benchmarks/prospective.py predict)
are committed: dp_sgd + randomized_smoothing is one of the combinations they must precede.
Cost (quick profile, an otherwise idle 2-core machine): about 70 min on fmnist (per noise level
and seed, training DP-SGD alone ≈ 75 s, with adversarial training ≈ 110 s, with randomized
smoothing ≈ 75 s; two certifications of 10–30 s; the DP-SGD, PGD and probe measurements) and
about 10 min on adult. On cores other jobs share, several times that.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from defcon.cli.main import run_script
from defcon.effectiveness import Summary
from defcon.measure.composer import CLEAN_ACCURACY, Composer
from defcon.planning.records import CompositionRecord
from defcon.report.reports import load_record, save_figure, save_record
from defcon.storage import atomic_write_json, atomic_write_text
from defcon.terminal import say

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "frontier"
DP = "dp_sgd"
# The robustness defenses on the frontier and the metric each is read by.
ROBUST: dict[str, str] = {
    "randomized_smoothing": "certified_accuracy",
    "adversarial_training": "robust_accuracy",
}
LABELS = {"randomized_smoothing": "RS certified acc.", "adversarial_training": "AT robust acc."}
COLOURS = {"randomized_smoothing": "tab:blue", "adversarial_training": "tab:orange"}


class Point(BaseModel):
    """One noise level of one pairing: the combined model's ε, robustness and clean accuracy."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    defense: str  # the robustness defense composed with dp_sgd
    metric: str
    noise_multiplier: float
    epsilon: Summary  # per person, on the combined model
    robust: Summary  # the defense's metric on dp_sgd + defense
    clean: Summary  # clean test accuracy of dp_sgd + defense
    dp_alone_robust: Summary | None = None  # the same metric on dp_sgd alone (same σ_DP)
    dp_alone_clean: Summary | None = None
    label: str  # the composition's measured label (defcon.effectiveness)
    record: str  # the composition record's file name


class Reference(BaseModel):
    """A no-DP arm of a pairing (ε = ∞): the defense alone, or no defense at all."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    defense: str
    metric: str
    arm: str  # "alone" or "no defense"
    robust: Summary
    clean: Summary


# ---------------------------------------------------------------------- pure parts


def point_from_record(
    record: CompositionRecord,
    defense: str,
    noise_multiplier: float,
    record_name: str,
    dp_alone: tuple[Summary, Summary] | None = None,
) -> Point:
    """The frontier point of a dp_sgd + `defense` record (ε and metric of the combined arm)."""
    metric = ROBUST[defense]
    return Point(
        dataset=record.dataset,
        defense=defense,
        metric=metric,
        noise_multiplier=noise_multiplier,
        epsilon=_verdict(record, DP, "epsilon").combined,
        robust=_verdict(record, defense, metric).combined,
        clean=record.clean_accuracy_combined,
        dp_alone_robust=dp_alone[0] if dp_alone else None,
        dp_alone_clean=dp_alone[1] if dp_alone else None,
        label=record.label,
        record=record_name,
    )


def references_from_record(record: CompositionRecord, defense: str) -> list[Reference]:
    """The defense alone and no defense (both without DP) of a dp_sgd + `defense` record."""
    metric = ROBUST[defense]
    verdict = _verdict(record, defense, metric)
    alone_clean = record.result(defense).clean_accuracy_alone
    common = {"dataset": record.dataset, "defense": defense, "metric": metric}
    return [
        Reference(**common, arm="alone", robust=verdict.alone, clean=alone_clean),
        Reference(
            **common,
            arm="no defense",
            robust=verdict.no_defense,
            clean=record.clean_accuracy_no_defense,
        ),
    ]


def _verdict(record: CompositionRecord, defense: str, metric: str):
    for verdict in record.result(defense).metrics:
        if verdict.metric == metric:
            return verdict
    raise KeyError(f"{record.dataset}: {defense} has no metric {metric} in the record")


def _cell(summary: Summary | None, digits: int = 3) -> str:
    if summary is None:
        return "–"
    mean = summary.mean
    if mean is None:
        return "∞" if summary.infinite and all(s > 0 for s in summary.infinite) else "nan"
    return f"{mean:.{digits}f} ± {summary.std or 0.0:.{digits}f}"


def markdown(
    points: Sequence[Point],
    references: Sequence[Reference],
    *,
    command: str,
    seconds: dict[str, float],
    wall_time_s: float,
) -> str:
    """Tables per dataset and defense: ε, the defense's metric and clean accuracy per σ_DP."""
    lines = [
        "# Robustness–privacy frontier",
        "",
        "DP-SGD at several noise multipliers σ_DP composed with randomized smoothing (certified "
        "accuracy at L2 radius 0.25, σ = 0.25) and with adversarial training (robust accuracy "
        "under L∞ PGD); ε per person (δ = 1/(10·people)); mean ± std over seeds. "
        "'dp_sgd alone' is the same metric on the DP-SGD model without the robustness defense; "
        "'label' is the composition's measured label. Plot: `frontier.png`.",
    ]
    keyed: dict[tuple[str, str], list[Point]] = defaultdict(list)
    for point in points:
        keyed[(point.dataset, point.defense)].append(point)
    for (dataset, defense), rows in keyed.items():
        metric = ROBUST[defense]
        lines += [
            "",
            f"## {dataset}: dp_sgd + {defense} ({metric})",
            "",
            f"| σ_DP | ε | {metric} (dp_sgd + {defense}) | {metric} (dp_sgd alone) "
            "| clean acc. (combined) | clean acc. (dp_sgd alone) | label |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in sorted(rows, key=lambda p: p.noise_multiplier):
            lines.append(
                f"| {p.noise_multiplier:g} | {_cell(p.epsilon, 2)} | {_cell(p.robust)} | "
                f"{_cell(p.dp_alone_robust)} | {_cell(p.clean)} | {_cell(p.dp_alone_clean)} | "
                f"{p.label} |"
            )
        for ref in references:
            if (ref.dataset, ref.defense) == (dataset, defense):
                what = f"{defense} alone" if ref.arm == "alone" else "no defense"
                lines.append(
                    f"| no DP ({what}) | ∞ | {_cell(ref.robust)} | – | {_cell(ref.clean)} | – | – |"
                )
    lines += [
        "",
        f"Wall time of the invocation that wrote this: {wall_time_s:.0f} s (points whose records "
        f"were on disk are read back). Compute the points took when measured (cache misses, from "
        f"the records), {sum(seconds.values()):.0f} s in all:",
    ]
    lines += [
        f"- {label}: {value:.0f} s"
        for label, value in sorted(seconds.items(), key=lambda kv: -kv[1])
    ]
    lines += ["", f"Produced by `{command}`.", ""]
    return "\n".join(lines)


def plot(points: Sequence[Point], references: Sequence[Reference], path: Path) -> Path:
    """Per dataset: robustness vs ε (left) and clean accuracy vs ε (right); no DP at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(p.dataset for p in points))
    fig, axes = plt.subplots(
        len(datasets), 2, figsize=(11, 4.2 * len(datasets) + 1), squeeze=False, layout="constrained"
    )
    for (left, right), dataset in zip(axes, datasets, strict=True):
        here = [p for p in points if p.dataset == dataset and p.epsilon.mean is not None]
        if not here:
            continue
        top = max(p.epsilon.mean for p in here)
        no_dp = top * 4  # where ε = ∞ is drawn, past a dashed separator
        shared_drawn = False  # dp_sgd alone and no defense: one clean accuracy for both pairings
        for defense in ROBUST:
            rows = sorted((p for p in here if p.defense == defense), key=lambda p: p.epsilon.mean)
            if not rows:
                continue
            refs = {r.arm: r for r in references if (r.dataset, r.defense) == (dataset, defense)}
            colour, metric = COLOURS[defense], ROBUST[defense]
            eps = [p.epsilon.mean for p in rows]
            _series(left, eps, [p.robust for p in rows], colour, f"dp_sgd + {defense}")
            _series(right, eps, [p.clean for p in rows], colour, f"dp_sgd + {defense}")
            alone = [p.dp_alone_robust for p in rows]
            if all(s is not None for s in alone):
                _series(left, eps, alone, colour, f"dp_sgd alone ({metric})", dotted=True)
            clean_alone = [p.dp_alone_clean for p in rows]
            if not shared_drawn and all(s is not None for s in clean_alone):
                _series(right, eps, clean_alone, "tab:gray", "dp_sgd alone", dotted=True)
            if "alone" in refs:
                ref = refs["alone"]
                _series(left, [no_dp], [ref.robust], colour, f"{defense} alone", marker="s")
                _series(right, [no_dp], [ref.clean], colour, f"{defense} alone", marker="s")
            if "no defense" in refs:
                ref = refs["no defense"]
                _series(left, [no_dp], [ref.robust], colour, f"no defense ({metric})", marker="x")
                if not shared_drawn:
                    _series(right, [no_dp], [ref.clean], "tab:gray", "no defense", marker="x")
            shared_drawn = True
        for ax, title in (
            (left, "certified (RS) / robust (AT) accuracy"),
            (right, "clean accuracy"),
        ):
            ax.set_xscale("log")
            ax.axvline((top * no_dp) ** 0.5, color="black", linestyle="--", linewidth=0.8)
            ax.text(  # x in data units, y as a fraction of the axes (their y-range differs)
                no_dp, 0.02, "no DP\n(ε = ∞)", ha="center", fontsize=7,
                transform=ax.get_xaxis_transform(),
            )  # fmt: skip
            ax.set_title(f"{dataset}: {title}", fontsize=10)
            ax.set_xlabel("ε per person (log scale)", fontsize=8)
            if ax is left:
                ax.set_ylim(0, 1)  # clean accuracy keeps its own range: its changes are small
            ax.grid(alpha=0.3)
    legend: dict[str, object] = {}  # one legend for the figure: every panel uses the same styles
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=3, fontsize=8)
    return save_figure(fig, path)


def _series(
    ax,
    xs: Sequence[float],
    ys: Sequence[Summary],
    colour: str,
    label: str,
    *,
    dotted: bool = False,
    marker: str = "o",
) -> None:
    """Mean ± std over seeds at each x (a line through several points)."""
    ax.errorbar(
        xs, [_mean(s) for s in ys], yerr=[s.std or 0.0 for s in ys], marker=marker,
        linestyle=":" if dotted else ("-" if len(xs) > 1 else "none"), color=colour, capsize=3,
        markersize=7 if marker == "x" else 5, label=label,
    )  # fmt: skip


def _mean(summary: Summary) -> float:
    return summary.mean if summary.mean is not None and math.isfinite(summary.mean) else math.nan


def record_name(dataset: str, profile: str, seeds: int, defense: str, noise: float) -> str:
    return f"{dataset}-{profile}-seeds{seeds}-{DP}+{defense}-noise{noise:g}.json"


# ---------------------------------------------------------------------- measuring


class DPAlone(BaseModel):
    """The robustness defense's metric and clean accuracy on dp_sgd alone, with the compute
    time it took; saved beside the point's record so a rerun reads it back."""

    model_config = ConfigDict(frozen=True)

    robust: Summary
    clean: Summary
    seconds: dict[str, float]


def measure_point(
    dataset: str,
    defense: str,
    noise: float,
    *,
    profile: str,
    seeds: int,
    cache: Path,
    out: Path,
    log: Callable[[str], None],
    device: str = "auto",
) -> tuple[CompositionRecord, str, DPAlone]:
    """The record of dp_sgd (σ_DP = noise) + defense and the dp_sgd-alone readings, each read
    back when saved (the composer, and its dataset, are only built when something is missing)."""
    name = record_name(dataset, profile, seeds, defense, noise)
    path = out / "records" / name
    side = path.with_suffix(".dp_alone.json")
    composer: Composer | None = None

    def get_composer() -> Composer:
        nonlocal composer
        if composer is None:
            composer = Composer(
                dataset, profile=profile, cache_dir=cache, device=device,
                configs={DP: {"noise_multiplier": noise}}, log=lambda m: log(f"  {m}"),
            )  # fmt: skip
        return composer

    if path.is_file():
        record = load_record(path)
        log(f"{dataset}: {DP}({noise:g}) + {defense}: record reused ({path})")
    else:
        started = time.perf_counter()
        log(f"{dataset}: measuring {DP}({noise:g}) + {defense}")
        record = get_composer().compose([DP, defense], seeds=seeds, max_seeds=seeds, force=True)
        save_record(record, path)
        log(f"{dataset}: {DP}({noise:g}) + {defense} done in {time.perf_counter() - started:.0f} s")
    if side.is_file():
        return record, name, DPAlone.model_validate_json(side.read_text())
    composer = get_composer()
    before = dict(composer.cache.seconds)
    robust, clean = [], []
    for seed in record.seeds:
        alone = composer.run_pipeline(composer.pipeline([DP], seed, poisoned=False))
        (robust_defense,) = composer.pipeline([defense], seed, poisoned=False).defenses
        robust.append(composer.measure(alone, robust_defense)[ROBUST[defense]])
        clean.append(composer.measure(alone, None)[CLEAN_ACCURACY])
    spent = {
        label: round(value - before.get(label, 0.0), 2)
        for label, value in composer.cache.seconds.items()
        if value > before.get(label, 0.0)
    }
    dp_alone = DPAlone(robust=Summary.of(robust), clean=Summary.of(clean), seconds=spent)
    atomic_write_text(side, dp_alone.model_dump_json(indent=2) + "\n")
    return record, name, dp_alone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fmnist,adult")
    parser.add_argument("--defenses", default=",".join(ROBUST), help="comma-separated")
    parser.add_argument("--noise", default="0.5,1,2,4", help="DP-SGD noise multipliers")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cache", type=Path, default=ROOT.parent / ".defcon-cache")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (cache keys include them)"
    )
    args = parser.parse_args(argv)
    defenses = [d for d in args.defenses.split(",") if d]
    unknown = sorted(set(defenses) - set(ROBUST))
    if unknown:
        parser.error(f"--defenses: {', '.join(unknown)} not among {', '.join(ROBUST)}")
    try:
        noises = sorted({float(n) for n in args.noise.split(",") if n})
    except ValueError:
        parser.error(f"--noise: not a list of numbers: {args.noise}")
    if not noises or any(not math.isfinite(n) or n <= 0 for n in noises):
        parser.error(f"--noise: give positive noise multipliers, got {args.noise}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("DEFCON_PROGRESS", "0")

    def log(message: str) -> None:
        say(message)

    started = time.perf_counter()
    points: list[Point] = []
    references: dict[tuple[str, str, str], Reference] = {}
    seconds: dict[str, float] = defaultdict(float)
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        for defense in defenses:
            for noise in noises:
                record, name, dp_alone = measure_point(
                    dataset, defense, noise, profile=args.profile, seeds=args.seeds,
                    cache=args.cache, out=args.out, log=log, device=args.device,
                )  # fmt: skip
                points.append(
                    point_from_record(
                        record, defense, noise, name, (dp_alone.robust, dp_alone.clean)
                    )
                )
                for ref in references_from_record(record, defense):
                    references.setdefault((ref.dataset, ref.defense, ref.arm), ref)
                for label, value in (*record.seconds.items(), *dp_alone.seconds.items()):
                    seconds[f"{dataset}: {label}"] += value
    refs = list(references.values())
    wall = time.perf_counter() - started
    command = "python benchmarks/frontier.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    atomic_write_json(
        args.out / "frontier.json",
        {
            "command": command.strip(),
            "profile": args.profile,
            "seeds": args.seeds,
            "noise_multipliers": noises,
            "points": [p.model_dump(mode="json") for p in points],
            "references": [r.model_dump(mode="json") for r in refs],
            "wall_time_s": round(wall, 1),
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        },
    )
    atomic_write_text(
        args.out / "frontier.md",
        markdown(points, refs, command=command.strip(), seconds=seconds, wall_time_s=wall),
    )
    plot(points, refs, args.out / "frontier.png")
    print(f"wall time {wall:.0f} s; results: {args.out / 'frontier.md'}")
    return 0


if __name__ == "__main__":
    run_script(main)
