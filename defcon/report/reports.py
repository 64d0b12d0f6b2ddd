"""Human-facing reports of a composition: a terminal table, a bar chart, the JSON record on disk."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from defcon.effectiveness import Summary
from defcon.engine.defense_settings import settings_text
from defcon.planning.notices import notice_lines
from defcon.planning.records import CompositionRecord
from defcon.report.scoring import signed
from defcon.storage import atomic_write_bytes, atomic_write_text
from defcon.terminal import SafeConsole
from defcon.terminal import console as safe_console
from defcon.vocabulary import Direction

_ARROW = {Direction.HIGHER: "↑", Direction.LOWER: "↓"}


def record_stem(record: CompositionRecord) -> str:
    """A file-name stem naming a combination run and every setting that changes its result.

    Dataset, profile, seed set and combination are readable; tolerances, forced, configs, the
    thread count and the code hash go into a short hash, so two runs that differ only there never
    overwrite each other's record.
    """
    settings = {
        "tolerances": record.tolerances, "forced": record.forced, "configs": record.configs,
        "threads": record.threads, "code": record.code, "max_seeds": record.max_seeds,
    }  # fmt: skip
    for extra in ("device", "model", "dataset_sha256"):  # only where set: older stems stay
        value = getattr(record, extra)
        if value not in (None, "cpu"):
            settings[extra] = value
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    raw = (
        f"{record.dataset}-{record.profile}-seeds{record.seed_start}x{len(record.seeds)}-"
        f"{'+'.join(record.order)}-{digest}"
    )
    return re.sub(r"[^A-Za-z0-9_+.-]", "_", raw)


def _fmt(summary: Summary | None) -> str:
    """mean±std without spaces, so three arms and the drop fit 100 columns."""
    return "—" if summary is None else str(summary).replace(" ± ", "±")


def composition_table(record: CompositionRecord) -> Table:
    """Alone vs combined per defense metric, with the verdict for each."""
    seeds = len(record.seeds)
    table = Table(
        title=(
            f"{' → '.join(record.order)} on {record.dataset} "
            f"({record.profile} profile, {seeds} seed{'s' if seeds > 1 else ''}, mean ± std)"
        ),
        title_justify="left",
        box=box.SIMPLE_HEAD,  # no vertical rules: the columns' room goes to the numbers
        pad_edge=False,
    )
    names = max((len(f"{r.defense} ({r.stage})") for r in record.results), default=0)
    # the defense name heads its rows and never wraps; metric names and intervals wrap instead
    table.add_column("defense / metric", min_width=max(names, 16), overflow="fold")
    for column in ("no defense", "alone", "combined"):
        table.add_column(column, justify="right", no_wrap=True)
    # the interval and tolerance wrap under the drop; outcomes wrap at their spaces
    table.add_column(escape("drop [interval] (tol.)"), justify="right", width=16)
    table.add_column("outcome", justify="left", width=13)
    for result in record.results:
        table.add_row(f"[bold]{escape(result.defense)}[/] ({result.stage})", "", "", "", "", "")
        for verdict in result.metrics:
            table.add_row(
                f"  {verdict.metric} {_ARROW[verdict.direction]}",
                _fmt(verdict.no_defense),
                _fmt(verdict.alone),
                _fmt(verdict.combined),
                _drop(verdict),
                _OUTCOME_STYLE[verdict.outcome],
            )
        table.add_row(f"  [dim]outcome: {result.outcome}[/]", "", "", "", "", "")
    table.add_section()
    table.add_row(
        "clean accuracy ↑", _fmt(record.clean_accuracy_no_defense), "",
        _fmt(record.clean_accuracy_combined), "", "",
    )  # fmt: skip
    return table


_OUTCOME_STYLE = {
    "held": "[green]held[/]",
    "dropped": "[red]dropped[/]",
    "inconclusive": "[yellow]inconclusive[/]",
    "not_effective_alone": "[magenta]not effective alone[/]",
    "diagnostic": "[dim]diagnostic[/]",
}
_LABEL_COLOUR = {
    "effective": "green",
    "ineffective": "red",
    "inconclusive": "yellow",
    "not_effective_alone": "magenta",
}


def _drop(verdict) -> str:  # MetricVerdict
    if not verdict.judged:
        return f"{signed(verdict.drop.mean)}"
    return (
        f"{signed(verdict.drop.mean)} [{signed(verdict.drop.lower)}, "
        f"{signed(verdict.drop.upper)}] ({verdict.tolerance:.3g})"
    )


def print_report(
    record: CompositionRecord, console: Console | None = None, width: int | None = None
) -> None:
    """The composition report: headline notes, the table, the verdict line. `width` sets the
    columns when no console is given (default: the terminal's, at least 100)."""
    if console is None:
        console = (
            safe_console(min_width=100)
            if width is None
            else SafeConsole(width=width, highlight=False)
        )
    if record.unreliable:  # before the table: its numbers come from an underfit model
        console.print(
            f"[bold red]Verdict: unreliable[/] (measured label {record.label} not trusted)"
        )
        for reason in record.unreliable:
            console.print(f"[red]unreliable:[/] {reason}")
    for line in notice_lines(record.notices):  # what defcon changed, before the table
        console.print(line, markup=False, highlight=False)
    if record.configs:  # the user's defense settings, as measured
        console.print(f"settings: {settings_text(record.configs)}", markup=False)
    console.print(composition_table(record))
    colour = _LABEL_COLOUR[record.label]
    predicted = ", ".join(f"{name}: {label}" for name, label in record.predicted.items())
    console.print(
        f"Measured: [bold {colour}]{record.label}[/]   Predicted: {predicted}   "
        f"Scenario (every arm): {', '.join(record.scenario) or 'none'}   "
        f"Seeds: {', '.join(map(str, record.seeds))}   Wall time: {record.wall_time_s:.1f} s   "
        f"Cache: {record.cache['models_trained']} models trained, "
        f"{record.cache['models_reused']} reused; {record.cache['measurements_computed']} "
        f"measurements computed, {record.cache['measurements_reused']} reused"
    )
    for note in record.warnings:
        console.print(f"[yellow]warning:[/] {note}")


def bar_chart(record: CompositionRecord, path: Path | str) -> Path:
    """Alone vs combined (mean ± std) per defense metric, one panel per metric, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(r.defense, v) for r in record.results for v in r.metrics]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (defense, verdict) in zip(axes[0], panels, strict=True):
        arms = (verdict.no_defense, verdict.alone, verdict.combined)
        means = [_plottable(a.center) for a in arms]
        stds = [a.std or 0.0 for a in arms]
        colour = {"dropped": "tab:red", "held": "tab:green"}.get(verdict.outcome, "tab:gray")
        ax.bar(
            ["none", "alone", "combined"], means, yerr=stds, capsize=4,
            color=["tab:gray", "tab:blue", colour],
        )  # fmt: skip
        for position, arm in enumerate(arms):  # a bar cannot show ∞ or n/a: write it instead
            if not math.isfinite(arm.center):
                ax.annotate(
                    str(arm), (position, 0), xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=11,
                )  # fmt: skip
        ax.set_xlabel(verdict.outcome.replace("_", " "), fontsize=8)
        ax.set_title(f"{defense}\n{verdict.metric} {_ARROW[verdict.direction]}", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(
        f"{' → '.join(record.order)} on {record.dataset}: measured {record.label}", fontsize=10
    )
    return save_figure(fig, path)


def _plottable(value: float) -> float:
    """Bars cannot show ∞ or NaN: a zero-height bar, labelled with the value (∞, n/a)."""
    return value if math.isfinite(value) else 0.0


def save_figure(fig, path: Path | str) -> Path:  # fig: matplotlib Figure (imported lazily)
    """Write a matplotlib figure as a PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:  # a figure that chose its own layout keeps it
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def save_record(record: CompositionRecord, path: Path | str) -> Path:
    """Write `record` as JSON atomically (a reader never sees half a record)."""
    atomic_write_text(path, record.model_dump_json(indent=2) + "\n")
    return Path(path)


def load_record(path: Path | str) -> CompositionRecord:
    """The record at `path`; a ValueError when it does not parse or has a newer schema."""
    from defcon.planning.records import readable

    return readable(CompositionRecord.model_validate_json(Path(path).read_text()), str(path))
