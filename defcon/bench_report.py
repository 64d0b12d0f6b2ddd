"""RESULTS.md and the summary plot of a bench run: measured labels vs every technique's predictions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from defcon.bench import BenchResult
from defcon.checker import TECHNIQUES
from defcon.records import CompositionRecord
from defcon.reports import save_figure
from defcon.scoring import LABELS, TechniqueScore, score
from defcon.storage import atomic_write_text


def _stages(record: CompositionRecord) -> str:
    return " + ".join(result.stage.value for result in record.results)


def _defense_cell(record: CompositionRecord) -> str:
    cells = []
    for result in record.results:
        for v in result.metrics:
            mark = "✓" if v.effective else "✗"
            cells.append(
                f"{result.defense}.{v.metric} {v.alone.mean:.2f}±{v.alone.std:.2f} → "
                f"{v.combined.mean:.2f}±{v.combined.std:.2f} {mark}"
            )
    return "<br>".join(cells)


def scores_by_dataset(records: Sequence[CompositionRecord]) -> dict[str, dict[str, TechniqueScore]]:
    """Per dataset (and 'all'), each technique's score."""
    groups: dict[str, list[CompositionRecord]] = {}
    for record in records:
        groups.setdefault(record.dataset, []).append(record)
    groups["all"] = list(records)
    return {name: {t: score(t, group) for t in TECHNIQUES} for name, group in groups.items()}


def results_markdown(result: BenchResult) -> str:
    """The RESULTS.md text: scores first, then every combination with its evidence."""
    records = result.records
    techniques = list(TECHNIQUES)
    scores = scores_by_dataset(records)
    trained = sum(r.cache["models_trained"] for r in records)
    reused = sum(r.cache["models_reused"] for r in records)
    compute = sum(r.wall_time_s for r in records)
    lines = [
        "# defcon benchmark: predicted vs measured",
        "",
        f"Profile `{result.profile}`, {result.seeds} seed(s) per combination, executor "
        f"`{result.executor}` with {result.workers} worker(s). A defense stays effective unless "
        "the one-sided 90 % lower confidence bound of its paired drop (alone → combined) exceeds "
        "its declared tolerance; a combination is measured effective iff all its defenses stay "
        "effective. 'ineffective' is the positive class.",
        "",
        f"- Combinations measured: {len(records)}; skipped as not applicable: "
        f"{len(result.skipped)}; could not run together: {len(result.failed)}",
        f"- Wall time of this invocation: {result.wall_time_s:.0f} s; summed compute time of the "
        f"combinations: {compute:.0f} s",
        f"- Model cache: {trained} models trained, {reused} requests served from the cache "
        f"({reused / max(1, trained + reused):.0%} of all model requests)",
        "",
        "## Technique scores",
        "",
        "| dataset | technique | n | accuracy | balanced accuracy | confusion (measured → predicted) |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, by_technique in scores.items():
        for technique, s in by_technique.items():
            confusion = "; ".join(f"{m}→{p}: {s.confusion[m][p]}" for m in LABELS for p in LABELS)
            lines.append(
                f"| {dataset} | {technique} | {s.n} | {s.accuracy:.2f} | "
                f"{s.balanced_accuracy:.2f} | {confusion} |"
            )
    lines += ["", "## Combinations", ""]
    for dataset in sorted({r.dataset for r in records}):
        lines += [
            f"### {dataset}",
            "",
            "| combination (applied order) | stages | per-defense metric alone → combined "
            "(mean±std) | clean acc. combined | measured | " + " | ".join(techniques) + " |",
            "|---|---|---|---|---|" + "---|" * len(techniques),
        ]
        for record in sorted(
            (r for r in records if r.dataset == dataset), key=lambda r: (len(r.order), r.order)
        ):
            predictions = " | ".join(
                record.predicted[t] + ("" if record.predicted[t] == record.label else " ✗")
                for t in techniques
            )
            lines.append(
                f"| {' → '.join(record.order)} | {_stages(record)} | {_defense_cell(record)} | "
                f"{record.clean_accuracy_combined.mean:.3f} | **{record.label}** | {predictions} |"
            )
        lines.append("")
    lines += ["## Misses (prediction ≠ measurement) with the measured evidence", ""]
    for technique in techniques:
        misses = scores["all"][technique].misses
        lines.append(f"### {technique} ({len(misses)})")
        lines.append("")
        lines += [
            f"- {m.dataset}: {' → '.join(m.combination)}: predicted {m.predicted}, measured "
            f"{m.measured}. {m.evidence}"
            for m in misses
        ] or ["- none"]
        lines.append("")
    flagged = [r for r in records if r.warnings]
    if flagged:
        lines += ["## Warnings", ""]
        lines += [
            f"- {r.dataset}: {' → '.join(r.order)}: {note}" for r in flagged for note in r.warnings
        ]
        lines.append("")
    if result.failed:
        lines += ["## Combinations that could not run together", ""]
        lines += [f"- {s.dataset}: {' + '.join(s.defenses)}: {s.reason}" for s in result.failed]
        lines.append("")
    if result.skipped:
        lines += ["## Skipped combinations", ""]
        lines += [f"- {s.dataset}: {' + '.join(s.defenses)}: {s.reason}" for s in result.skipped]
        lines.append("")
    return "\n".join(lines)


def summary_plot(result: BenchResult, path: Path | str) -> Path:
    """Accuracy and balanced accuracy of each technique, per dataset, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = scores_by_dataset(result.records)
    datasets = list(scores)
    techniques = list(TECHNIQUES)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    width = 0.8 / len(techniques)
    for ax, attribute in zip(axes, ("accuracy", "balanced_accuracy"), strict=True):
        for i, technique in enumerate(techniques):
            values = [getattr(scores[d][technique], attribute) for d in datasets]
            ax.bar([j + i * width for j in range(len(datasets))], values, width, label=technique)
        ax.set_xticks([j + width * (len(techniques) - 1) / 2 for j in range(len(datasets))])
        ax.set_xticklabels(datasets)
        ax.set_ylim(0, 1)
        ax.set_title(attribute.replace("_", " "))
    axes[0].legend(fontsize=8)
    fig.suptitle("Predicted vs measured conflicts", fontsize=10)
    return save_figure(fig, path)


def write_results(result: BenchResult, out: Path | str) -> tuple[Path, Path]:
    """Write RESULTS.md, the summary plot and a JSON summary into `out`."""
    out = Path(out)
    markdown = out / "RESULTS.md"
    atomic_write_text(markdown, results_markdown(result) + "\n")
    plot = summary_plot(result, out / "summary.png")
    summary = {
        name: {t: s.model_dump(mode="json", exclude={"misses"}) for t, s in by.items()}
        for name, by in scores_by_dataset(result.records).items()
    }
    atomic_write_text(out / "scores.json", json.dumps(summary, indent=2) + "\n")
    return markdown, plot
