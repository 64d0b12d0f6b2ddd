"""Renderings of a `defcon.report.report_model.Report`: Markdown, a Hugging Face model card (YAML front
matter with `model-index`, then the Markdown) and a CycloneDX 1.6 ML-BOM with a `modelCard`.

Each takes the reports of one or more records; none recomputes a number.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence

import yaml

from defcon.planning.dataset_info import datasets
from defcon.report.report_model import EVIDENCE_LEVEL, Estimate, Report
from defcon.vocabulary import DataKind

FORMATS = ("text", "md", "html", "model-card", "cyclonedx")  # html: defcon.audit.html_report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_one(report: Report) -> str:
    """Summary first, then evidence, crosswalk, what was not measured, and versions."""
    lines = [f"# {report.title}", "", "## Summary", ""]
    lines += [f"- {line}" for line in report.summary]
    lines += [
        "", "## Evidence", "",
        report.evidence_note, "",
        f"| defense / risk | metric | arm | mean [{EVIDENCE_LEVEL} CI] | seeds | outcome |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in report.evidence:
        lines.append(
            f"| {_cell(row.subject)} | {_cell(row.metric)} | {_cell(row.arm)} | "
            f"{row.estimate.text()} | {row.estimate.n} | {_cell(row.outcome or '')} |"
        )
    for arm, estimate in report.clean_accuracy.items():
        lines.append(f"| clean accuracy | accuracy | {arm} | {estimate.text()} | {estimate.n} | |")
    lines += [
        "", "## Regulatory crosswalk", "",
        "Where each risk's evidence belongs; a mapping, not a claim of compliance.", "",
        "| risk | measured here | metrics | EU AI Act | NIST AI RMF |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for row in report.crosswalk:
        lines.append(
            f"| {row.risk} | {'yes' if row.measured else 'no'} | "
            f"{_cell(', '.join(row.metrics)) or '—'} | {_cell(row.eu_ai_act)} | "
            f"{_cell('; '.join(row.nist_ai_rmf))} |"
        )
    lines += ["", "## Not measured", ""]
    lines += [f"- {_cell(what)}: {_cell(why)}" for what, why in report.not_measured.items()]
    if not report.not_measured:
        lines.append("- nothing")
    if report.methods:
        lines += ["", "## How each metric was measured", ""]
        lines += [f"- `{_cell(name)}`: {_cell(how)}" for name, how in report.methods.items()]
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    lines += ["", "## Versions", "", versions or "not recorded", ""]
    return "\n".join(lines)


def markdown(reports: Sequence[Report]) -> str:
    """One Markdown document: each record's report, separated by rules."""
    return "\n---\n\n".join(markdown_one(report) for report in reports)


def _metric_value(estimate: Estimate) -> float | None:
    value = estimate.value
    return None if value is None or not math.isfinite(value) else round(value, 6)


def _is_images(dataset: str) -> bool:
    """Whether a record's dataset is a registered image dataset (a user's file reads as tabular)."""
    entry = datasets().get(dataset)
    return entry is not None and entry.kind is DataKind.IMAGE


def model_card(reports: Sequence[Report]) -> str:
    """Hugging Face model card: `model-index` holds every finite metric mean (∞ and n/a stay in
    the body, which writes them out)."""
    results = []
    for report in reports:
        metrics = [
            {
                "type": row.metric,
                "value": value,
                "verified": False,
                "name": f"{row.subject} {row.metric} ({row.arm}, mean of {row.estimate.n} seeds)",
            }  # fmt: skip
            for row in report.evidence
            if (value := _metric_value(row.estimate)) is not None
        ]
        metrics += [
            {
                "type": "accuracy",
                "value": value,
                "verified": False,
                "name": f"clean accuracy ({arm})",
            }
            for arm, estimate in report.clean_accuracy.items()
            if (value := _metric_value(estimate)) is not None
        ]
        results.append(
            {
                "task": {
                    "type": "image-classification"
                    if _is_images(report.dataset)
                    else "tabular-classification"
                },
                "dataset": {"name": report.dataset, "type": report.dataset},
                "metrics": metrics,
            }
        )
    front = {
        "tags": ["defcon", "defense-composition"],
        "model-index": [{"name": " | ".join(r.title for r in reports), "results": results}],
    }
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n{markdown(reports)}"


def _value_text(estimate: Estimate) -> str:
    """The mean as CycloneDX's string: 6 significant digits, '∞' or 'n/a'."""
    if estimate.infinite or estimate.mean is None:
        return estimate.text()
    return f"{estimate.mean:.6g}"


def _bound(value: float | None) -> str | None:
    return None if value is None else f"{value:.6g}"


def cyclonedx(reports: Sequence[Report]) -> str:
    """CycloneDX 1.6 ML-BOM: one machine-learning-model component per record, its `modelCard`
    carrying each metric with its confidence interval (values as strings, as the schema asks)."""
    components = []
    for report in reports:
        metrics = []
        for row in report.evidence:
            entry: dict = {
                "type": row.metric, "value": _value_text(row.estimate),
                "slice": f"{row.subject}, arm: {row.arm}, seeds: {row.estimate.n}",
            }  # fmt: skip
            if row.estimate.lower is not None and row.estimate.upper is not None:
                entry["confidenceInterval"] = {
                    "lowerBound": _bound(row.estimate.lower),
                    "upperBound": _bound(row.estimate.upper),
                }
            metrics.append(entry)
        name = report.title
        components.append(
            {
                "type": "machine-learning-model",
                "bom-ref": f"defcon:{uuid.uuid5(uuid.NAMESPACE_URL, name)}",
                "name": name,
                "description": " ".join(report.summary),
                "modelCard": {
                    "modelParameters": {
                        "task": "classification",
                        "datasets": [{"type": "dataset", "name": report.dataset}],
                    },
                    "quantitativeAnalysis": {"performanceMetrics": metrics},
                    "considerations": {
                        "technicalLimitations": [
                            f"not measured: {what}: {why}"
                            for what, why in report.not_measured.items()
                        ],
                    },
                },
            }
        )
    body = json.dumps([r.model_dump(mode="json") for r in reports], sort_keys=True)
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, body)}",
        "version": 1,
        "metadata": {
            "tools": {
                "components": [
                    {"type": "application", "name": "defcon",
                     "version": reports[0].versions.get("defcon", "unknown") if reports else "unknown"}
                ]
            }
        },
        "components": components,
    }  # fmt: skip
    return json.dumps(bom, indent=2, ensure_ascii=False) + "\n"


RENDERERS = {"md": markdown, "model-card": model_card, "cyclonedx": cyclonedx}
