"""RESULTS.md and the summary plot of a bench run: measured labels vs every technique's predictions."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from defcon.bench.run import BenchResult
from defcon.checker import TECHNIQUES
from defcon.effectiveness import CONFIDENCE, looks, verdict_rule
from defcon.effectiveness import LABELS as MEASURED_LABELS
from defcon.planning.records import CompositionRecord
from defcon.report.reports import save_figure
from defcon.report.scoring import (
    BOOTSTRAP_SEED,
    LABELS,
    RESAMPLES,
    TechniqueScore,
    deciding_verdicts,
    evidence_of,
    interval_text,
    score,
    score_text,
)
from defcon.storage import atomic_write_text

_MARK = {"held": "✓", "dropped": "✗", "inconclusive": "?", "not_effective_alone": "∅",
         "diagnostic": "·"}  # fmt: skip


def _key(record: CompositionRecord) -> tuple[str, tuple[str, ...]]:
    return record.dataset, tuple(sorted(record.defenses))


def undecided_metrics(record: CompositionRecord) -> list[tuple[str, str]]:
    """(defense, why) for each metric that kept the record's label from being conclusive (its
    inconclusive drop or its not-effective-alone gain, as `evidence` words it), with the seeds
    read. Empty for a conclusive record."""
    if record.conclusive:
        return []
    return [
        (result.defense, f"{evidence_of(result, verdict)}, {len(record.seeds)} seeds")
        for result, verdict in deciding_verdicts(record)
    ]


def stability(first: Sequence[CompositionRecord], second: Sequence[CompositionRecord]) -> dict:
    """Labels of the same combinations measured on two disjoint seed sets.

    `label_flip_rate` is the share of combinations conclusive in both runs whose labels differ.
    `reproducible_share` is stricter: among the combinations (measured in both runs) conclusive
    in *either* run, the share conclusive with the same label in both — a label that is
    conclusive on one seed set only does not reproduce.
    """
    by_key = {_key(r): r for r in second}
    pairs = [(r, by_key[_key(r)]) for r in first if _key(r) in by_key]
    both = [(a, b) for a, b in pairs if a.conclusive and b.conclusive]
    flips = [(a, b) for a, b in both if a.label != b.label]
    either = [(a, b) for a, b in pairs if a.conclusive or b.conclusive]
    same = [(a, b) for a, b in both if a.label == b.label]
    return {
        "combinations_in_both": len(pairs),
        "conclusive_in_both": len(both),
        "label_flips": len(flips),
        "label_flip_rate": len(flips) / len(both) if both else None,
        "conclusive_in_either": len(either),
        "reproduced": len(same),
        "reproducible_share": len(same) / len(either) if either else None,
        "same_label_any": sum(a.label == b.label for a, b in pairs),
        "first_seeds": sorted({s for r in first for s in r.seeds}),
        "second_seeds": sorted({s for r in second for s in r.seeds}),
        "flipped": [
            {
                "dataset": a.dataset,
                "combination": list(a.order),
                "first": a.label,
                "second": b.label,
            }
            for a, b in flips
        ],
        "changed_conclusiveness": [
            {
                "dataset": a.dataset,
                "combination": list(a.order),
                "first": a.label,
                "second": b.label,
                "why": [why for _, why in undecided_metrics(a) + undecided_metrics(b)],
            }
            for a, b in pairs
            if a.conclusive != b.conclusive
        ],  # fmt: skip
        # which defense kept a label conclusive on one seed set from being so on the other
        "not_reproduced_by": dict(
            Counter(
                defense
                for a, b in pairs
                if a.conclusive != b.conclusive
                for defense in {d for d, _ in undecided_metrics(a) + undecided_metrics(b)}
            ).most_common()
        ),
    }


def coverage(records: Sequence[CompositionRecord]) -> dict[str, dict]:
    """Per dataset (and 'all'): the share of measured combinations with a conclusive label."""
    groups: dict[str, list[CompositionRecord]] = {
        name: [r for r in records if r.dataset == name]
        for name in sorted({r.dataset for r in records})
    }
    if records:
        groups["all"] = list(records)
    return {
        group: {
            "measured": len(members),
            "conclusive": sum(r.conclusive for r in members),
            "coverage": sum(r.conclusive for r in members) / len(members),
        }
        for group, members in groups.items()
    }


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def headline(records: Sequence[CompositionRecord], repeat: BenchResult | None) -> list[str]:
    """The two numbers that say how far the scores can be trusted, per dataset."""
    cover = coverage(records)
    shares = "; ".join(
        f"{group} {_share(c['coverage'])} ({c['conclusive']} of {c['measured']})"
        for group, c in cover.items()
    )
    lines = [
        "- **Coverage** (measured combinations with a conclusive label): "
        + (f"{shares}." if cover else "n/a (nothing measured).")
    ]
    if repeat is None:
        lines.append("- **Reproducible share**: n/a (no second seed set).")
        return lines
    parts = []
    for group in cover:
        chosen = [r for r in records if group == "all" or r.dataset == group]
        again = [r for r in repeat.records if group == "all" or r.dataset == group]
        st = stability(chosen, again)
        parts.append(
            f"{group} {_share(st['reproducible_share'])} ({st['reproduced']} of "
            f"{st['conclusive_in_either']})"
        )
    lines.append(
        "- **Reproducible share** (combinations conclusive with the same label on both seed sets, "
        "of those conclusive on either): " + "; ".join(parts) + "."
    )
    return lines


def label_counts(records: Sequence[CompositionRecord]) -> dict[str, dict[str, int]]:
    """Per dataset (and 'all'): how many combinations got each measured label."""
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        for group in (record.dataset, "all"):
            row = counts.setdefault(group, {label: 0 for label in MEASURED_LABELS})
            row[record.label] += 1
    return counts


def time_breakdown(records: Sequence[CompositionRecord]) -> dict[str, float]:
    """Compute seconds of all records' cache misses, by what (training, measuring X, …)."""
    total: dict[str, float] = {}
    for record in records:
        for label, seconds in record.seconds.items():
            total[label] = total.get(label, 0.0) + seconds
    return dict(sorted(total.items(), key=lambda item: -item[1]))


def undefended_readings(records: Sequence[CompositionRecord]) -> list[tuple]:
    """Per dataset, defense and metric: the values without the defense (every seed seen).

    For an ownership check this is its false-accusation reading on a model that does not carry
    the defense; for every metric it shows the undefended model failing (or not).
    """
    seen: dict[tuple[str, str, str], dict[int, float | None]] = {}
    alone: dict[tuple[str, str, str], dict[int, float | None]] = {}
    for record in records:
        for result in record.results:
            for v in result.metrics:
                key = (record.dataset, result.defense, v.metric)
                for seed, value in zip(record.seeds, v.no_defense.raw(), strict=False):
                    seen.setdefault(key, {})[seed] = value
                for seed, value in zip(record.seeds, v.alone.raw(), strict=False):
                    alone.setdefault(key, {})[seed] = value
    rows = []
    for key in sorted(seen):
        none = [x for x in seen[key].values() if not math.isnan(x)]
        defended = [x for x in alone.get(key, {}).values() if not math.isnan(x)]
        rows.append((*key, len(seen[key]), none, defended))
    return rows


def _stages(record: CompositionRecord) -> str:
    return " + ".join(result.stage.value for result in record.results)


def _short(summary) -> str:  # Summary
    center = summary.center
    if math.isnan(center):
        return "n/a"
    if math.isinf(center):
        return "∞" if center > 0 else "−∞"
    return f"{center:.2f}±{summary.std or 0.0:.2f}"


def _defense_cell(record: CompositionRecord) -> str:
    cells = []
    for result in record.results:
        for v in result.metrics:
            cells.append(
                f"{result.defense}.{v.metric} {_short(v.no_defense)} / {_short(v.alone)} → "
                f"{_short(v.combined)} {_MARK[v.outcome]}"
            )
    return "<br>".join(cells)


def scores_by_dataset(records: Sequence[CompositionRecord]) -> dict[str, dict[str, TechniqueScore]]:
    """Per dataset (and 'all'), each technique's score."""
    groups: dict[str, list[CompositionRecord]] = {}
    for record in records:
        groups.setdefault(record.dataset, []).append(record)
    groups["all"] = list(records)
    return {name: {t: score(t, group) for t in TECHNIQUES} for name, group in groups.items()}


def leave_one_out(records: Sequence[CompositionRecord]) -> dict[str, dict[str, TechniqueScore]]:
    """For each defense, every technique's score on the combinations without it: a technique
    whose score rests on one defense's declarations shows it here."""
    defenses = sorted({name for record in records for name in record.defenses})
    return {
        left: {t: score(t, [r for r in records if left not in r.defenses]) for t in TECHNIQUES}
        for left in defenses
    }


def _stats(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    if any(math.isinf(v) for v in values):
        return "∞ (no guarantee)" if all(v == math.inf for v in values) else "mixed ±∞"
    mean = sum(values) / len(values)
    return f"{mean:.3f} (min {min(values):.3f}, max {max(values):.3f})"


@dataclass(frozen=True)
class BenchSummary:
    """What RESULTS.md and scores.json say, computed once from the records: each section of
    RESULTS.md is a function of this value (`SECTIONS`), so computing and rendering stay apart."""

    result: BenchResult
    repeat: BenchResult | None
    techniques: tuple[str, ...]
    scores: dict[str, dict[str, TechniqueScore]]
    leave_one_out: dict[str, dict[str, TechniqueScore]]
    stability: dict | None
    seconds: dict[str, float]

    @classmethod
    def of(cls, result: BenchResult, repeat: BenchResult | None = None) -> BenchSummary:
        records = result.records
        return cls(
            result=result,
            repeat=repeat,
            techniques=tuple(TECHNIQUES),
            scores=scores_by_dataset(records),
            leave_one_out=leave_one_out(records),
            stability=stability(records, repeat.records) if repeat is not None else None,
            seconds=time_breakdown(records),
        )

    @property
    def records(self) -> list[CompositionRecord]:
        return list(self.result.records)


def _added_seeds(seeds: int, most: int, records: Sequence[CompositionRecord]) -> str:
    """How seeds were added while undecided, as the records' verdicts say (records made before
    the looks of rule point 4 read every added seed at the nominal confidence)."""
    if most <= seeds:
        return "no seeds added"
    used = {v.confidence for r in records for d in r.results for v in d.metrics}
    if used and used <= {CONFIDENCE}:
        return (
            f"more added one at a time up to {most} while a verdict is inconclusive, each at "
            f"{CONFIDENCE:.0%} per side (measured before the rule's looks, point 4)"
        )
    schedule = ", ".join(str(n) for n in looks(seeds, most))
    return f"more added while a verdict is inconclusive, read at {schedule} seeds"


def _overview(summary: BenchSummary) -> list[str]:
    """Title, the verdict rule quoted from the code, and what was measured, when and how fast."""
    result, records = summary.result, summary.records
    trained = sum(r.cache["models_trained"] for r in records)
    reused = sum(r.cache["models_reused"] for r in records)
    compute = sum(r.wall_time_s for r in records)
    seeds_used = [len(r.seeds) for r in records]
    return [
        "# defcon benchmark: predicted vs measured",
        "",
        f"Profile `{result.profile}`; seeds from {result.seed_start}, {result.seeds} per "
        f"combination, {_added_seeds(result.seeds, result.max_seeds, records)}; executor "
        f"`{result.executor}` with {result.workers} worker(s).",
        "",
        "Rule (`defcon/effectiveness.py`, quoted from the code's own statement):",
        "",
        verdict_rule(),
        "",
        "Only `effective` / `ineffective` labels score the techniques; 'ineffective' is the "
        "positive class.",
        "",
        "- Summarised: every record in the folder's `records/` (this invocation's selection and "
        f"earlier runs'): datasets {', '.join(sorted({r.dataset for r in records})) or 'none'}; "
        f"profiles {', '.join(sorted({r.profile for r in records})) or 'none'}",
        f"- Combinations measured: {len(records)}; skipped as not applicable: "
        f"{len(result.skipped)}; could not run together: {len(result.failed)}",
        f"- Seeds used per combination: mean {sum(seeds_used) / max(1, len(seeds_used)):.1f}, "
        f"max {max(seeds_used, default=0)}",
        f"- Not measured yet: {result.pending}"
        if result.pending
        else "- Every combination measured",
        (
            "- Summaries rebuilt from the records on disk (`--report-only`); summed wall time of "
            f"the combinations' own runs: {compute:.0f} s"
            if result.report_only
            else f"- Wall time of this invocation: {result.wall_time_s:.0f} s; summed wall time "
            f"of the combinations' own runs: {compute:.0f} s"
        ),
        *[
            f"- Measuring run finished {run.finished}: {run.combinations_run} combinations "
            f"(seeds from {run.seed_start}) in {run.wall_time_s:.0f} s wall time with "
            f"{run.workers} worker(s) ({run.executor})"
            + (f", code at commit {run.commit}" if run.commit else "")
            for run in result.runs
        ],
        f"- Model cache: {trained} models trained, {reused} requests served from the cache "
        f"({reused / max(1, trained + reused):.0%} of all model requests)",
    ]


def _labels(summary: BenchSummary) -> list[str]:
    """How many combinations got each label, per dataset."""
    lines = [
        "",
        "## Measured labels",
        "",
        "| dataset | " + " | ".join(MEASURED_LABELS) + " |",
        "|---|" + "---|" * len(MEASURED_LABELS),
    ]
    for dataset, row in label_counts(summary.records).items():
        lines.append(
            f"| {dataset} | " + " | ".join(str(row[label]) for label in MEASURED_LABELS) + " |"
        )
    return lines


def _scores(summary: BenchSummary) -> list[str]:
    """Coverage and reproducibility first, then each technique's scores per dataset."""
    lines = [
        "",
        "## Technique scores (conclusive labels only)",
        "",
        *headline(summary.records, summary.repeat),
        "",
        "The scores below count only conclusive labels: read them with the coverage and the "
        "reproducible share above. Balanced accuracy with a bootstrap 95 % interval "
        f"({RESAMPLES} resamples of the scored combinations, seed {BOOTSTRAP_SEED}), with a "
        "technique's lean where it reports `uncertain`; coverage is the share it decides, and "
        "the next column its balanced accuracy there (n).",
        "",
        "| dataset | technique | n | accuracy | balanced accuracy [95 % CI] | coverage | "
        "balanced accuracy where it decides | confusion (measured → predicted) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, by_technique in summary.scores.items():
        for technique, s in by_technique.items():
            confusion = "; ".join(f"{m}→{p}: {s.confusion[m][p]}" for m in LABELS for p in LABELS)
            lines.append(
                f"| {dataset} | {technique} | {s.n} | {score_text(s.accuracy)} | "
                f"{score_text(s.balanced_accuracy)}{interval_text(s.balanced_accuracy_ci)} | "
                f"{score_text(s.coverage)} | {score_text(s.decided_balanced_accuracy)} "
                f"({s.decided}) | {confusion} |"
            )
    return lines


def _leave_one_out(summary: BenchSummary) -> list[str]:
    """Each technique's balanced accuracy without the combinations of one defense."""
    techniques = summary.techniques
    lines = [
        "",
        "## Leave one defense out (balanced accuracy [bootstrap 95 % CI] on the combinations "
        "without it, all datasets)",
        "",
        "| left out | n | " + " | ".join(techniques) + " |",
        "|---|---|" + "---|" * len(techniques),
    ]
    for left, by_technique in summary.leave_one_out.items():
        n = next(iter(by_technique.values())).n
        lines.append(
            f"| {left} | {n} | "
            + " | ".join(
                score_text(by_technique[t].balanced_accuracy)
                + interval_text(by_technique[t].balanced_accuracy_ci)
                for t in techniques
            )
            + " |"
        )
    return lines


def _stability(summary: BenchSummary) -> list[str]:
    """The same benchmark on a disjoint seed set: flips and what stayed conclusive."""
    repeat, st = summary.repeat, summary.stability
    if repeat is None or st is None:
        return []
    rate = st["label_flip_rate"]
    lines = [
        "",
        "## Stability: the same benchmark on a disjoint seed set",
        "",
        f"Seeds {st['first_seeds'][0] if st['first_seeds'] else '-'}… vs "
        f"{st['second_seeds'][0] if st['second_seeds'] else '-'}… "
        + ("" if repeat.report_only else f"({repeat.wall_time_s:.0f} s wall time for the repeat). ")
        + f"{st['combinations_in_both']} combinations in both runs, "
        f"{st['conclusive_in_both']} conclusive in both; label flips among those: "
        f"{st['label_flips']} (label_flip_rate "
        f"{'n/a' if rate is None else f'{rate:.3f}'}); same label overall (any of the four): "
        f"{st['same_label_any']}; conclusive in either run: {st['conclusive_in_either']}, "
        f"of which conclusive with the same label in both: {st['reproduced']} "
        f"(reproducible_share {_share(st['reproducible_share'])})."
        + (f" Not measured yet in the repeat: {repeat.pending}." if repeat.pending else ""),
        "",
    ]
    lines += [
        f"- flipped: {f['dataset']}: {' → '.join(f['combination'])}: {f['first']} → {f['second']}"
        for f in st["flipped"]
    ]
    lines += [
        f"- conclusive in one run only: {f['dataset']}: {' → '.join(f['combination'])}: "
        f"{f['first']} vs {f['second']}" + (f" ({'; '.join(f['why'])})" if f.get("why") else "")
        for f in st["changed_conclusiveness"]
    ]
    if st.get("not_reproduced_by"):
        counts = ", ".join(f"{name} {n}" for name, n in st["not_reproduced_by"].items())
        lines += [
            "",
            "Defenses whose metric kept a label conclusive on one seed set from being so on the "
            f"other (a combination counts once per defense): {counts}.",
        ]
    return lines


def _time(summary: BenchSummary) -> list[str]:
    """Compute seconds by kind of work (cache misses only)."""
    total = sum(summary.seconds.values())
    lines = [
        "",
        "## Where the time goes",
        "",
        "Compute seconds of the cache misses of all combinations (a model or measurement shared "
        "by several combinations is counted once, by the one that computed it).",
        "",
        "| what | seconds | share |",
        "|---|---|---|",
    ]
    return lines + [
        f"| {label} | {seconds:.0f} | {seconds / max(total, 1e-9):.0%} |"
        for label, seconds in summary.seconds.items()
    ]


def _undefended(summary: BenchSummary) -> list[str]:
    """Every defense metric on the no-defense model: can it fail?"""
    lines = [
        "",
        "## Undefended readings (can every metric fail?)",
        "",
        "Each defense metric on the no-defense model of its combinations (per seed; for ownership "
        "checks this is the false-accusation reading on a model that does not carry the defense) "
        "beside the defended value.",
        "",
        "| dataset | defense | metric | seeds | no defense: mean (min, max) | alone: mean (min, max) |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {dataset} | {defense} | {metric} | {n} | {_stats(none)} | {_stats(alone)} |"
        for dataset, defense, metric, n, none, alone in undefended_readings(summary.records)
    ]


def _combinations(summary: BenchSummary) -> list[str]:
    """One row per combination: per-defense evidence, the label and every prediction."""
    records, techniques = summary.records, summary.techniques
    lines = ["", "## Combinations", ""]
    for dataset in sorted({r.dataset for r in records}):
        lines += [
            f"### {dataset}",
            "",
            "| combination (applied order) | stages | per-defense metric no defense / alone → "
            "combined (mean±std), outcome | seeds | clean acc. none / combined | measured | "
            + " | ".join(techniques)
            + " |",
            "|---|---|---|---|---|---|" + "---|" * len(techniques),
        ]
        for record in sorted(
            (r for r in records if r.dataset == dataset), key=lambda r: (len(r.order), r.order)
        ):
            predictions = " | ".join(
                record.predicted[t]
                + ("" if not record.conclusive or record.predicted[t] == record.label else " ✗")
                for t in techniques
            )
            lines.append(
                f"| {' → '.join(record.order)} | {_stages(record)} | {_defense_cell(record)} | "
                f"{len(record.seeds)} | {record.clean_accuracy_no_defense} / "
                f"{record.clean_accuracy_combined} | **{record.label}** | {predictions} |"
            )
        lines.append("")
    return lines + [
        "Outcome marks: ✓ held, ✗ dropped, ? inconclusive, ∅ not effective alone, · diagnostic "
        "(reported, not judged).",
    ]


def _misses(summary: BenchSummary) -> list[str]:
    """Each technique's wrong predictions with the measured evidence."""
    lines = ["", "## Misses (prediction ≠ conclusive measurement) with the measured evidence", ""]
    for technique in summary.techniques:
        misses = summary.scores["all"][technique].misses
        lines.append(f"### {technique} ({len(misses)})")
        lines.append("")
        lines += [
            f"- {m.dataset}: {' → '.join(m.combination)}: predicted {m.predicted}, measured "
            f"{m.measured}. {m.evidence}"
            for m in misses
        ] or ["- none"]
        lines.append("")
    return lines


def _notes(summary: BenchSummary) -> list[str]:
    """Warnings, combinations that could not run together, and skipped ones."""
    result, lines = summary.result, []
    flagged = [r for r in summary.records if r.warnings]
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
    return lines


SECTIONS: tuple[Callable[[BenchSummary], list[str]], ...] = (
    _overview, _labels, _scores, _leave_one_out, _stability, _time, _undefended, _combinations,
    _misses, _notes,
)  # fmt: skip


def render(summary: BenchSummary) -> str:
    """The RESULTS.md text of a computed summary: its sections in order."""
    return "\n".join(line for section in SECTIONS for line in section(summary))


def results_markdown(result: BenchResult, repeat: BenchResult | None = None) -> str:
    """The RESULTS.md text: scores first, then labels, stability, time, every combination."""
    return render(BenchSummary.of(result, repeat))


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
            values = [getattr(scores[d][technique], attribute) or 0.0 for d in datasets]
            ax.bar([j + i * width for j in range(len(datasets))], values, width, label=technique)
        ax.set_xticks([j + width * (len(techniques) - 1) / 2 for j in range(len(datasets))])
        ax.set_xticklabels(datasets)
        ax.set_ylim(0, 1)
        ax.set_title(attribute.replace("_", " "))
    axes[0].legend(fontsize=8)
    fig.suptitle("Predicted vs measured conflicts", fontsize=10)
    return save_figure(fig, path)


def write_results(
    result: BenchResult, out: Path | str, repeat: BenchResult | None = None
) -> tuple[Path, Path]:
    """Write RESULTS.md, the summary plot and scores.json (with `stability` when repeated)."""
    out = Path(out)
    markdown = out / "RESULTS.md"
    computed = BenchSummary.of(result, repeat)
    atomic_write_text(markdown, render(computed) + "\n")
    plot = summary_plot(result, out / "summary.png")
    summary: dict = {
        name: {t: s.model_dump(mode="json", exclude={"misses"}) for t, s in by.items()}
        for name, by in computed.scores.items()
    }
    summary["labels"] = label_counts(result.records)
    cover = coverage(result.records)
    summary["coverage"] = cover["all"]["coverage"] if cover else None
    summary["coverage_by_dataset"] = cover
    summary["reproducible_share"] = (
        computed.stability["reproducible_share"] if computed.stability else None
    )
    summary["leave_one_defense_out"] = {
        left: {t: s.model_dump(mode="json", exclude={"misses", "confusion"}) for t, s in by.items()}
        for left, by in computed.leave_one_out.items()
    }
    summary["seconds"] = {k: round(v, 1) for k, v in computed.seconds.items()}
    summary["wall_time_s"] = result.wall_time_s
    summary["measuring_runs"] = [run.model_dump() for run in result.runs]
    if repeat is not None and computed.stability is not None:
        summary["stability"] = {
            **computed.stability,
            "coverage": coverage(repeat.records),
            "wall_time_s": repeat.wall_time_s,
            "measuring_runs": [run.model_dump() for run in repeat.runs],
            "not_measured_yet_in_repeat": repeat.pending,
        }
    atomic_write_text(out / "scores.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return markdown, plot
