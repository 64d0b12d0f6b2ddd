"""Rich renderings of specs, the catalog and verdicts, for the CLI (one screen each).

User-declared text (reasons, titles) is wrapped in `Text`, never parsed as rich markup.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from defcon.checker import Verdict
from defcon.vocabulary import DefenseSpec, Stage

_STAGE_NAMES = {Stage.PRE: "pre-training", Stage.IN: "in-training", Stage.POST: "post-training"}


def _slots(spec: DefenseSpec) -> str:
    return "\n".join(f"{s}{'*' if s.exclusive else ''}" for s in sorted(spec.slots)) or "—"


def catalog_table(catalog: Mapping[str, DefenseSpec]) -> RenderableType:
    """Every defense, grouped by stage in pipeline order; one risk or slot per line."""
    table = Table(
        title="defcon catalog",
        caption="* exclusive slot: at most one defense per training loop",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    table.add_column("stage", no_wrap=True)
    table.add_column("defense", overflow="fold")  # user names may be long: fold, never cut
    for column in ("mitigates", "uses", "slots"):
        table.add_column(column, no_wrap=True)
    stages = sorted({spec.stage for spec in catalog.values()}, key=lambda s: s.position)
    for stage in stages:
        members = sorted((s for s in catalog.values() if s.stage is stage), key=lambda s: s.name)
        for index, spec in enumerate(members):
            table.add_row(
                stage.value if index == 0 else "",
                spec.name,
                "\n".join(sorted(spec.mitigates)),
                "\n".join(sorted(spec.uses_risks)) or "—",
                _slots(spec),
                end_section=index == len(members) - 1,
            )
    return table


def spec_view(spec: DefenseSpec) -> RenderableType:
    """Everything a spec declares, including the reason behind each used risk."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("stage", f"{spec.stage} ({spec.stage.description})")
    facts.add_row("mitigates", "\n".join(f"{r}: {r.description}" for r in sorted(spec.mitigates)))
    uses = "\n".join(f"{u.risk}: {u.reason}" for u in sorted(spec.uses, key=lambda u: u.risk))
    facts.add_row("uses", Text(uses or "— (relies on no risk)"))
    if spec.slots:
        facts.add_row(
            "slots",
            "\n".join(
                f"{s} ({'exclusive' if s.exclusive else 'shared'}): {s.description}"
                for s in sorted(spec.slots)
            ),
        )
    facts.add_row("data kinds", ", ".join(sorted(spec.data_kinds)))
    if spec.needs_sensitive_attribute:
        facts.add_row("needs", "a sensitive attribute in the data")
    facts.add_row("threats", ", ".join(sorted(spec.threats)) or "—")
    facts.add_row("reference", Text(spec.reference or "—"))
    facts.add_row(
        "mechanism",
        Text(spec.implementation)
        if spec.implementation
        else "none: declaration only (the checker reasons about it; nothing can run it)",
    )
    metrics = Table(title="effectiveness metrics", title_justify="left")
    for column in ("metric", "better", "tolerance", "description"):
        metrics.add_column(column)
    for metric in spec.metrics:
        metrics.add_row(
            metric.name, metric.direction.value, f"{metric.tolerance:g}", Text(metric.description)
        )
    header = Text.assemble((spec.name, "bold"), " — ", spec.title)
    return Group(header, Text(""), facts, Text(""), metrics, Text(""), factor_table(spec))


def settings_table(name: str, config: type[BaseModel]) -> RenderableType:
    """Every setting of a defense, as `--set NAME.FIELD=VALUE` changes it."""
    from defcon.engine.defense_settings import settings_rows

    table = Table(
        title=f"settings (--set {name}.FIELD=VALUE or --settings FILE.toml)", title_justify="left"
    )
    for column in ("setting", "default", "type", "meaning"):
        table.add_column(column)
    rows = settings_rows(config)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    if not rows:
        table.add_row("—", "", "", "this defense has no settings")
    return table


def factor_table(spec: DefenseSpec) -> RenderableType:
    """The factors a spec moves and depends on, each with its reason and reference."""
    table = Table(title="factors (docs/factors.md)", title_justify="left")
    for column in ("", "factor", "reason", "reference"):
        table.add_column(column)
    for label, claims in (("moves", spec.moves), ("depends on", spec.depends_on)):
        for claim in claims:
            arrow = f"{claim.arrow()} (read)" if claim.reads else claim.arrow()
            table.add_row(label, arrow, Text(claim.reason), Text(claim.reference))
    if not spec.moves and not spec.depends_on:
        table.add_row("—", "none declared", "", "")
    return table


def _bullets(title: str, sentences: list[str]) -> RenderableType:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=3, justify="right")
    grid.add_column()
    for sentence in sentences:
        grid.add_row("•", Text(f"{sentence}."))
    return Group(Text(""), Text(title, style="bold"), grid)


def verdict_view(verdict: Verdict) -> RenderableType:
    """The label, the order per stage, every conflict as a sentence, and any structural clash."""
    style = "bold green" if verdict.effective else "bold red"
    order = Table.grid(padding=(0, 2))
    order.add_column(width=3)
    order.add_column(style="bold")
    order.add_column()
    for stage, names in verdict.stages.items():
        order.add_row("", _STAGE_NAMES[Stage(stage)], " → ".join(names))
    word = "NO CONFLICT" if verdict.effective else "CONFLICT"
    note = f"technique: {verdict.technique}; confidence {verdict.confidence:.2f}"
    if verdict.uncertain:
        word, style = "UNCERTAIN", "bold yellow"
        note += f"; leans {verdict.label}"
    if not verdict.composable:  # the label is a prediction were they composable: never the headline
        word, style = "CANNOT SHARE A TRAINING LOOP", "bold red"
        note += f"; were they composable: {verdict.label}"
    headline = Text.assemble(
        (word, style), f"  {' + '.join(verdict.defenses)}  ", (f"({note})", "dim")
    )
    parts: list[RenderableType] = [
        headline,
        Text(""),
        Text(verdict.explanation),
        Text(""),
        Text("order to apply", style="bold"),
        order,
    ]
    if verdict.conflicts:
        parts.append(_bullets("conflicts", [c.sentence() for c in verdict.conflicts]))
    if verdict.factor_chains:
        parts.append(
            _bullets(
                "conflicts through factors",
                [chain.sentence() for chain in verdict.factor_chains]
                + ["each arrow's reason and reference: defcon show NAME"],
            )
        )
    if verdict.weak_chains:
        parts.append(
            _bullets(
                "harmful chains not counted (outweighed or tied under the SoK's guideline)",
                [chain.sentence() for chain in verdict.weak_chains],
            )
        )
    if verdict.clashes:
        parts.append(
            _bullets(
                "why they cannot be composed (structural clashes)",
                [c.sentence() for c in verdict.clashes],
            )
        )
    return Group(*parts)
