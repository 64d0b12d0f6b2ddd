"""One typed report of a composition or audit record, computed once and rendered by
`defcon.report.renderers` (Markdown, model card, CycloneDX): a plain-language summary first, then the
evidence (mean and confidence interval per arm over seeds) and the regulatory crosswalk.

Torch-free: an audit record is read by its fields, never by importing `defcon.audit.auditor`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from defcon.effectiveness import Interval, Summary, interval
from defcon.planning.notices import Notices
from defcon.planning.records import CompositionRecord
from defcon.report.crosswalk import ACCURACY, CROSSWALK
from defcon.vocabulary import Risk

if TYPE_CHECKING:
    from defcon.audit.auditor import AuditRecord


# Per side: the evidence's intervals are the two-sided 95 % t-intervals the report states, not the
# decision intervals (90 % per side, stricter at a verdict's looks), which the summary's changes
# quote as they were judged.
EVIDENCE_CONFIDENCE = 0.975
EVIDENCE_LEVEL = f"{2 * EVIDENCE_CONFIDENCE - 1:.0%}"  # two-sided, as the reports print it


class Estimate(BaseModel):
    """A mean over seeds and its two-sided confidence interval (None where undefined)."""

    model_config = ConfigDict(frozen=True)

    mean: float | None
    lower: float | None
    upper: float | None
    n: int
    infinite: int = 0  # +1 / −1: every seed was ±∞ (ε of a model trained without DP)

    @classmethod
    def of(cls, summary: Summary) -> Estimate:
        """The estimate of a metric's per-seed values (the CI of their mean)."""
        raw = summary.raw()
        center = summary.center
        if math.isinf(center):
            return cls(
                mean=None, lower=None, upper=None, n=len(raw), infinite=int(center > 0) * 2 - 1
            )
        mean, lower, upper = interval(raw, EVIDENCE_CONFIDENCE)
        return cls(mean=_finite(mean), lower=_finite(lower), upper=_finite(upper), n=len(raw))

    @classmethod
    def of_change(cls, change: Interval) -> Estimate:
        """A paired change (already an interval); ±1e300 bounds mean ±∞."""
        big = change.mean is None and change.lower is not None and abs(change.lower) >= 1e299
        if big:
            return cls(
                mean=None,
                lower=None,
                upper=None,
                n=change.n,
                infinite=1 if change.lower > 0 else -1,
            )
        return cls(mean=change.mean, lower=change.lower, upper=change.upper, n=change.n)

    @property
    def value(self) -> float | None:
        """The mean as a float for machine formats (±inf where infinite, None where undefined)."""
        return math.copysign(math.inf, self.infinite) if self.infinite else self.mean

    def text(self, signed: bool = False) -> str:
        """'0.700 [0.689, 0.711]', '∞' or 'n/a': ∞ is written, never drawn as an empty value."""
        if self.infinite:
            return "∞" if self.infinite > 0 else "−∞"
        if self.mean is None:
            return "n/a"
        spec = "+.3f" if signed else ".3f"
        if self.lower is None or self.upper is None:
            return format(self.mean, spec)
        return f"{self.mean:{spec}} [{self.lower:{spec}}, {self.upper:{spec}}]"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class EvidenceRow(BaseModel):
    """One metric on one arm."""

    model_config = ConfigDict(frozen=True)

    subject: str  # the defense whose metric it is (composition) or the risk (audit)
    metric: str
    arm: str
    estimate: Estimate
    outcome: str | None = None  # composition: held / dropped / …; audit: risk ↑ / ↓ / –


class CrosswalkRow(BaseModel):
    """A risk, whether this record measured it, and the clauses its evidence answers to."""

    model_config = ConfigDict(frozen=True)

    risk: str
    measured: bool
    metrics: tuple[str, ...]
    eu_ai_act: str
    nist_ai_rmf: tuple[str, ...]


class Report(BaseModel):
    """Everything the renderers write, computed once from one record."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["composition", "audit"]
    title: str
    dataset: str
    profile: str
    defenses: tuple[str, ...]
    order: tuple[str, ...]
    seeds: int
    verdict: str
    summary: tuple[str, ...]
    not_measured: dict[str, str]
    evidence: tuple[EvidenceRow, ...]
    clean_accuracy: dict[str, Estimate]
    accuracy_change: Estimate | None
    crosswalk: tuple[CrosswalkRow, ...]
    versions: dict[str, str]
    methods: dict[str, str] = Field(default_factory=dict)  # "defense.metric" → how it is measured

    @property
    def evidence_note(self) -> str:
        """What the evidence table's intervals are: one sentence for every format."""
        return (
            f"Mean over {self.seeds} seeds with its {EVIDENCE_LEVEL} confidence interval "
            "[lower, upper] (Student t). The summary's changes carry the intervals they were "
            "judged on."
        )


def build_report(record: CompositionRecord | AuditRecord) -> Report:
    """The report of either kind of record."""
    if isinstance(record, CompositionRecord):
        return composition_report(record)
    return audit_report(record)


def _mitigates(defenses: tuple[str, ...]) -> dict[str, tuple[Risk, ...]]:
    """Each defense's declared risks from the built-in catalog (none for a user's defense)."""
    from defcon.catalog import builtin_catalog

    catalog = builtin_catalog()
    return {
        name: tuple(sorted(catalog[name].mitigates)) if name in catalog else () for name in defenses
    }


def _paired(after: Summary, before: Summary) -> Estimate | None:
    a, b = after.raw(), before.raw()
    if len(a) != len(b) or not a:
        return None
    mean, lower, upper = interval([x - y for x, y in zip(a, b, strict=True)], EVIDENCE_CONFIDENCE)
    return Estimate(mean=_finite(mean), lower=_finite(lower), upper=_finite(upper), n=len(a))


def _utility_line(change: Estimate | None, before: Estimate, after: Estimate, arm: str) -> str:
    if change is None:
        return (
            f"Utility cost: clean accuracy {before.text()} without defenses, {after.text()} {arm}."
        )
    return (
        f"Utility cost: clean accuracy {before.text()} without defenses, {after.text()} {arm} "
        f"(change {change.text(signed=True)})."
    )


def _changed(notices: Notices) -> list[str]:
    """A summary line per thing defcon changed in the data or model (defcon.planning.notices)."""
    return [f"Changed by defcon: {notice.text}." for notice in notices]


def composition_report(record: CompositionRecord) -> Report:
    """Summary, evidence and crosswalk of a `defcon compose` record."""
    mitigates = _mitigates(record.defenses)
    protected = ", ".join(
        f"{name} ({', '.join(r.value for r in mitigates[name]) or 'risk not declared'})"
        for name in record.order
    )
    summary = [
        f"Protected: {protected}, combined in the order {' → '.join(record.order)} on "
        f"{record.dataset} ({record.profile} profile, {len(record.seeds)} seeds). "
        f"Verdict: {record.label.replace('_', ' ')}."
    ]
    if record.unreliable:
        summary.append("Unreliable: " + "; ".join(record.unreliable))
    summary += _changed(record.notices)
    by_outcome: dict[str, list[str]] = {}
    for result in record.results:
        for v in result.metrics:
            drop = Estimate.of_change(v.drop)
            words = f"{result.defense} {v.metric}"
            if v.outcome == "dropped":
                words += (
                    f" by {drop.text()} (alone {Estimate.of(v.alone).text()}, "
                    f"combined {Estimate.of(v.combined).text()})"
                )
            by_outcome.setdefault(v.outcome, []).append(words)
    phrases = {
        "held": "Held (kept its effect in the combination)",
        "dropped": "Dropped (worse in the combination than alone)",
        "inconclusive": "Inconclusive (the seeds cannot tell)",
        "not_effective_alone": "Not effective alone (nothing to lose)",
    }
    for outcome, phrase in phrases.items():
        if by_outcome.get(outcome):
            summary.append(f"{phrase}: {'; '.join(by_outcome[outcome])}.")
    before = Estimate.of(record.clean_accuracy_no_defense)
    after = Estimate.of(record.clean_accuracy_combined)
    change = _paired(record.clean_accuracy_combined, record.clean_accuracy_no_defense)
    summary.append(_utility_line(change, before, after, "combined"))
    if record.alternatives:  # a predicted conflict measured under --force
        options = "; ".join(" → ".join(order) for order in record.alternatives)
        summary.append(f"Conflict-free alternatives for the same risks, in order: {options}.")
    covered = {risk for risks in mitigates.values() for risk in risks}
    not_measured = {
        risk.value: "no defense in this combination mitigates it; a composition measures only "
        "its defenses' own metrics (run `defcon audit` for every risk)"
        for risk in Risk
        if risk not in covered
    }
    for name in by_outcome.get("diagnostic", []):
        not_measured[name] = "diagnostic metric: reported, not judged"
    summary.append(
        f"Not measured: {', '.join(not_measured) or 'nothing'}; the reasons follow the evidence."
    )
    evidence = tuple(
        EvidenceRow(
            subject=result.defense,
            metric=v.metric,
            arm=arm,
            estimate=Estimate.of(summary_),
            outcome=v.outcome,
        )  # fmt: skip
        for result in record.results
        for v in result.metrics
        for arm, summary_ in (
            ("no defense", v.no_defense),
            ("alone", v.alone),
            ("combined", v.combined),
        )  # fmt: skip
    )
    metrics_of = {
        risk: tuple(
            f"{r.defense}.{v.metric}"
            for r in record.results
            if risk in mitigates[r.defense]
            for v in r.metrics
        )  # fmt: skip
        for risk in Risk
    }
    return Report(
        kind="composition",
        title=f"{' + '.join(record.order)} on {record.dataset}",
        dataset=record.dataset, profile=record.profile, defenses=record.defenses,
        order=record.order, seeds=len(record.seeds), verdict=record.label,
        summary=tuple(summary), not_measured=not_measured, evidence=evidence,
        clean_accuracy={"no defense": before, "combined": after}, accuracy_change=change,
        crosswalk=_crosswalk(covered, metrics_of), versions=record.versions,
        methods=_methods(record.defenses),
    )  # fmt: skip


def _methods(defenses: tuple[str, ...]) -> dict[str, str]:
    """How each metric is measured (the attack, its settings, its reference), in the words of
    the built-in catalog's declaration; a user's own defense is said to be declared elsewhere."""
    from defcon.catalog import builtin_catalog

    catalog = builtin_catalog()
    found = {}
    for name in defenses:
        if name not in catalog:
            found[name] = "a defense outside the built-in catalog: see its own declaration"
            continue
        for metric in catalog[name].metrics:
            found[f"{name}.{metric.name}"] = metric.description or "no description declared"
    return found


def _crosswalk(
    measured: set[Risk], metrics_of: dict[Risk, tuple[str, ...]]
) -> tuple[CrosswalkRow, ...]:
    rows = [
        CrosswalkRow(
            risk=risk.value,
            measured=risk in measured,
            metrics=metrics_of.get(risk, ()),
            eu_ai_act=clause.eu_ai_act,
            nist_ai_rmf=clause.nist_ai_rmf,
        )  # fmt: skip
        for risk, clause in CROSSWALK.items()
    ]
    rows.append(
        CrosswalkRow(
            risk="clean accuracy",
            measured=True,
            metrics=("accuracy",),
            eu_ai_act=ACCURACY.eu_ai_act,
            nist_ai_rmf=ACCURACY.nist_ai_rmf,
        )  # fmt: skip
    )
    return tuple(rows)


_MOVED = {"up": "rose", "down": "fell", "none": "did not measurably change"}


def audit_report(record: AuditRecord) -> Report:
    """Summary, evidence and crosswalk of a `defcon audit` record (risks × arms)."""
    final = record.arms[-1]
    summary = [
        f"Protected: {', '.join(record.order)} on {record.dataset} ({record.profile} profile, "
        f"{len(record.seeds)} seeds); every risk measured on no defense, each defense alone"
        f"{' and the combination' if len(record.defenses) > 1 else ''}."
    ]
    summary += _changed(record.notices)
    if final != record.arms[0]:
        for metric in (m for m in record.metrics if m.primary):
            change = Estimate.of_change(metric.change[final])
            summary.append(
                f"{metric.risk.value}: with {final} the risk {_MOVED[metric.risk_change[final]]} "
                f"({metric.metric} {Estimate.of(metric.values[record.arms[0]]).text()} → "
                f"{Estimate.of(metric.values[final]).text()}, change {change.text(signed=True)})."
            )
    before = Estimate.of(record.clean_accuracy[record.arms[0]])
    after = Estimate.of(record.clean_accuracy[final])
    change = _paired(record.clean_accuracy[final], record.clean_accuracy[record.arms[0]])
    summary.append(_utility_line(change, before, after, f"with {final}"))
    summary.append(
        f"Not measured: {', '.join(record.not_measured) or 'nothing'}; the reasons follow the evidence."
    )
    evidence = tuple(
        EvidenceRow(
            subject=m.risk.value,
            metric=m.metric,
            arm=arm,
            estimate=Estimate.of(m.values[arm]),
            outcome=None if arm == record.arms[0] else f"risk {_MOVED[m.risk_change[arm]]}",
        )  # fmt: skip
        for m in record.metrics
        for arm in record.arms
        if arm in m.values
    )
    measured = {m.risk for m in record.metrics}
    metrics_of = {r: tuple(m.metric for m in record.metrics if m.risk is r) for r in measured}
    return Report(
        kind="audit", title=f"audit of {' + '.join(record.order)} on {record.dataset}",
        dataset=record.dataset, profile=record.profile, defenses=record.defenses,
        order=record.order, seeds=len(record.seeds), verdict=record.checker_label or "audited",
        summary=tuple(summary), not_measured=dict(record.not_measured), evidence=evidence,
        clean_accuracy={arm: Estimate.of(s) for arm, s in record.clean_accuracy.items()},
        accuracy_change=change, crosswalk=_crosswalk(measured, metrics_of),
        versions=record.versions,
    )  # fmt: skip
