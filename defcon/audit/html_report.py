"""`defcon report --format html`: one self-contained page for the people who sign off.

The same `Report` the other formats render (summary first, evidence with confidence intervals,
the regulatory crosswalk, what was not measured), plus each record's plot embedded as a base64
PNG, so the file can be mailed or archived alone. Every string that came from a record is
HTML-escaped, and the page's Content-Security-Policy allows no script and no remote resource,
so a record naming a defense `<script>…` renders as text.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from defcon.planning.records import CompositionRecord
from defcon.report.report_model import EVIDENCE_LEVEL, Report, build_report

if TYPE_CHECKING:
    from defcon.audit.auditor import AuditRecord

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #1a1a1a; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9rem; }
"""
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: int = -1) -> str:
    """A table of escaped cells; column `numeric` is set in tabular figures."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(c)}</td>' if i == numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def plot_png(record: CompositionRecord | AuditRecord) -> tuple[bytes | None, str]:
    """The record's plot as PNG bytes (the bar chart, or an audit's heatmap), else why not."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "plot.png"
            if isinstance(record, CompositionRecord):
                if not record.results:
                    return None, "the record holds no per-defense metrics to draw"
                from defcon.report.reports import bar_chart

                bar_chart(record, path)
            else:
                from defcon.audit.auditor import heatmap

                heatmap(record, path)
            return path.read_bytes(), ""
    except (ImportError, ValueError, OSError) as error:  # no matplotlib, or nothing to draw
        return None, f"the plot could not be drawn ({type(error).__name__}: {error})"


def section(report: Report, png: bytes | None, why_no_plot: str) -> str:
    """One record's part of the page."""
    parts = [f"<h1>{_e(report.title)}</h1>", "<h2>Summary</h2><ul>"]
    parts += [f"<li>{_e(line)}</li>" for line in report.summary]
    parts.append("</ul>")
    if png is not None:
        data = base64.b64encode(png).decode("ascii")
        alt = f"plot of {report.title}: each metric with no defense, alone and combined"
        parts.append(f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">')
    else:
        parts.append(f'<p class="note">No plot: {_e(why_no_plot)}.</p>')
    parts.append("<h2>Evidence</h2>")
    parts.append(f'<p class="note">{_e(report.evidence_note)}</p>')
    rows = [
        (r.subject, r.metric, r.arm, r.estimate.text(), str(r.estimate.n), r.outcome or "")
        for r in report.evidence
    ]
    rows += [
        ("clean accuracy", "accuracy", arm, estimate.text(), str(estimate.n), "")
        for arm, estimate in report.clean_accuracy.items()
    ]
    header = ("defense / risk", "metric", "arm", f"mean [{EVIDENCE_LEVEL} CI]", "seeds", "outcome")
    parts.append(_table(header, rows, numeric=3))
    parts.append("<h2>Regulatory crosswalk</h2>")
    parts.append(
        '<p class="note">Where each risk\'s evidence belongs; a mapping, not a claim of '
        "compliance.</p>"
    )
    crosswalk = [
        (
            row.risk,
            "yes" if row.measured else "no",
            ", ".join(row.metrics) or "—",
            row.eu_ai_act,
            "; ".join(row.nist_ai_rmf),
        )
        for row in report.crosswalk
    ]
    header = ("risk", "measured here", "metrics", "EU AI Act", "NIST AI RMF")
    parts.append(_table(header, crosswalk))
    parts.append("<h2>Not measured</h2><ul>")
    parts += [f"<li>{_e(what)}: {_e(why)}</li>" for what, why in report.not_measured.items()]
    parts.append("</ul>" if report.not_measured else "<li>nothing</li></ul>")
    if report.methods:
        items = "".join(f"<li>{_e(name)}: {_e(how)}</li>" for name, how in report.methods.items())
        parts.append(f"<h2>How each metric was measured</h2><ul>{items}</ul>")
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items()) or "not recorded"
    parts.append(f"<h2>Versions</h2><p>{_e(versions)}</p>")
    return "\n".join(parts)


def html_document(records: Sequence[CompositionRecord | AuditRecord]) -> str:
    """The page of one or more records, each with its plot where it can be drawn."""
    sections = []
    titles = []
    for record in records:
        report = build_report(record)
        png, why = plot_png(record)
        sections.append(f"<section>\n{section(report, png, why)}\n</section>")
        titles.append(report.title)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(' | '.join(titles) or 'defcon report')}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n<hr>\n".join(sections)
        + "\n</body>\n</html>\n"
    )
