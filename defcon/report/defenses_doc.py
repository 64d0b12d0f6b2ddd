"""docs/defenses.md, written from the catalog: one section per defense with its settings.

Generated, never hand-edited, so the page cannot drift from the specs and configs; a test
compares the committed page with `catalog_markdown(builtin_catalog())`.

    python -m defcon.report.defenses_doc > docs/defenses.md
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from defcon.engine.defense_settings import config_class, settings_rows
from defcon.vocabulary import DefenseSpec

STAGES = {"pre": "pre-training", "in": "in-training", "post": "post-training"}


def _cell(text: str) -> str:
    """Table-safe text: a pipe would split the cell, a newline the row."""
    return " ".join(str(text).split()).replace("|", "\\|")


def defense_markdown(spec: DefenseSpec) -> list[str]:
    """One defense: what it mitigates, its metrics, where it applies and its settings."""
    lines = [f"## `{spec.name}`", "", _cell(spec.title), ""]
    lines.append(f"- stage: {STAGES.get(spec.stage.value, spec.stage.value)}")
    lines.append(f"- mitigates: {', '.join(sorted(r.value for r in spec.mitigates))}")
    if spec.uses:
        uses = "; ".join(f"{u.risk.value} ({_cell(u.reason)})" for u in spec.uses)
        lines.append(f"- uses: {uses}")
    lines.append(f"- data: {', '.join(sorted(k.value for k in spec.data_kinds))}")
    if spec.needs_sensitive_attribute:
        lines.append("- needs a sensitive attribute")
    for declared in spec.not_applicable:
        lines.append(f"- not applicable to {declared.kind.value} data: {_cell(declared.reason)}")
    if spec.threats:
        lines.append(f"- threat scenario: {', '.join(sorted(t.value for t in spec.threats))}")
    if spec.reference:
        lines.append(f"- reference: {_cell(spec.reference)}")
    lines += ["", "| metric | better | tolerance | judged | meaning |", "|---|---|---|---|---|"]
    for metric in spec.metrics:
        judged = "yes" if metric.judged else "no (reported)"
        lines.append(
            f"| `{metric.name}` | {metric.direction.value} | {metric.tolerance:g} | {judged} "
            f"| {_cell(metric.description)} |"
        )
    lines.append("")
    if spec.implementation is None:
        lines += ["No implementation: declared for the checker only.", ""]
        return lines
    rows = settings_rows(config_class(spec.name, {spec.name: spec}))
    if not rows:
        lines += ["No settings.", ""]
        return lines
    lines += [
        f"Settings (`--set {spec.name}.FIELD=VALUE`, or a `[{spec.name}]` table in "
        "`--settings FILE.toml`):",
        "",
        "| setting | default | type | meaning |",
        "|---|---|---|---|",
    ]
    for name, default, kind, meaning in rows:
        lines.append(f"| `{name}` | `{_cell(default)}` | `{_cell(kind)}` | {_cell(meaning)} |")
    lines.append("")
    return lines


def catalog_markdown(catalog: Mapping[str, DefenseSpec]) -> str:
    """The whole page: an index, then every defense in stage order."""
    order = {"pre": 0, "in": 1, "post": 2}
    specs = sorted(catalog.values(), key=lambda s: (order.get(s.stage.value, 3), s.name))
    lines = [
        "# Defenses",
        "",
        "Generated from the catalog by `python -m defcon.report.defenses_doc > docs/defenses.md`; "
        "`defcon show NAME` prints the same in the terminal. Metrics marked *judged* decide the "
        "verdict; the others are reported beside it.",
        "",
        "| defense | stage | mitigates |",
        "|---|---|---|",
    ]
    for spec in specs:
        risks = ", ".join(sorted(r.value for r in spec.mitigates))
        lines.append(f"| [`{spec.name}`](#{spec.name}) | {spec.stage.value} | {risks} |")
    lines.append("")
    for spec in specs:
        lines += defense_markdown(spec)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    from defcon.catalog import builtin_catalog

    sys.stdout.write(catalog_markdown(builtin_catalog()))


if __name__ == "__main__":
    main()
