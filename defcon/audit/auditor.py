"""`defcon audit`: what a defense, or a combination, does to every risk — measured and predicted.

Arms: no defense, each named defense alone, and their combination in the checker's order. Every
arm faces the same adversary per risk (a risk's attack reads each arm's served model; poisoning's
BadNets poisoner trains with every arm), seed by seed. Per risk metric: mean ± std over seeds and
the paired change against no defense with its confidence interval (`defcon.effectiveness`),
read as the *risk* rising (↑), falling (↓) or not told apart (–) by the metric's declared
direction. A change is only a change when the interval excludes 0 *and* its mean is at least the
metric's declared practical size (`RiskMetric.min_effect`): a significant but tiny shift is "–". Beside it, the SoK guideline's prediction from the factor declarations
(`defcon.risks.guideline`). Models and measurements come from the composer's cache, so an audit
shares models with `compose` and resumes where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table
from torch import nn

from defcon.effectiveness import Interval, Summary, interval
from defcon.engine.data import Dataset, Split
from defcon.engine.defense_settings import settings_text
from defcon.engine.fingerprint import core_code, risks_code
from defcon.errors import DefconError, unknown
from defcon.measure.arms import Arm, ArmComparison, Reading, quiet_libraries
from defcon.measure.composer import Composer
from defcon.measure.model_notices import data_and_model_notices
from defcon.measure.pipelines import NO_DEFENSE, PipelineResult
from defcon.planning.notices import Notices, notice_lines
from defcon.planning.records import RecordHeader, versions
from defcon.planning.rules import plan_audit
from defcon.risks import UNMEASURED, Lab, RiskAttack, RiskMetric, risk_attacks, unmeasured
from defcon.risks.guideline import SOK, SYMBOL, Prediction, predict_combination
from defcon.storage import atomic_write_text
from defcon.vocabulary import Direction, Risk

Change = Literal["up", "down", "none"]
CHANGE_SYMBOL: dict[str, str] = {"up": "↑", "down": "↓", "none": "–"}
ARROW: dict[Direction | None, str] = {Direction.HIGHER: "↑", Direction.LOWER: "↓"}


class MetricAudit(BaseModel):
    """One risk metric on every arm, and each arm's paired change against no defense."""

    model_config = ConfigDict(frozen=True)

    risk: Risk
    metric: str
    riskier: Direction | None  # None: a count reported beside the risk (no direction)
    primary: bool
    undefined: str | None = None  # what a NaN value (n/a) means for this metric
    min_effect: float | None = None  # the practical size a change had to reach (None: older record)
    values: dict[str, Summary]  # arm → per-seed values
    change: dict[str, Interval]  # arm → arm − no defense (paired by seed)
    risk_change: dict[str, Change]  # arm → the risk rose / fell / cannot be told (–)


class AuditRecord(RecordHeader):
    """Everything one audit measured and predicted (written as JSON; enough to redraw it)."""

    arms: tuple[str, ...]
    checker_label: str | None
    risks: tuple[Risk, ...]
    references: dict[str, str]
    not_measured: dict[str, str]  # risk (or "risk: metric") → why (refused, no attack exists)
    metrics: tuple[MetricAudit, ...]
    clean_accuracy: dict[str, Summary]
    predictions: dict[str, dict[str, Prediction]]  # arm → risk → prediction
    guideline: str = SOK
    code: str
    versions: dict[str, str]
    wall_time_s: float
    cache: dict[str, int]
    seconds: dict[str, float]
    configs: dict[str, dict] = Field(default_factory=dict)  # a user's defense settings used
    notices: Notices = ()  # what defcon changed in the data or model (defcon.planning.notices)

    def primary(self, risk: Risk) -> MetricAudit:
        return next(m for m in self.metrics if m.risk is risk and m.primary)


def risk_change(
    riskier: Direction | None,
    lower: float | None,
    upper: float | None,
    mean: float | None = None,
    min_effect: float = 0.0,
) -> Change:
    """Which way the risk moved: the metric's paired interval excludes 0, read by `riskier`, and
    the mean change is at least `min_effect` (a smaller change is "none", whatever its p-value)."""
    if riskier is None or lower is None or upper is None or math.isnan(lower) or math.isnan(upper):
        return "none"
    if mean is not None and abs(mean) < min_effect:
        return "none"
    rose = lower > 0 if riskier is Direction.HIGHER else upper < 0
    fell = upper < 0 if riskier is Direction.HIGHER else lower > 0
    return "up" if rose else "down" if fell else "none"


def judge_change(metric: RiskMetric, differences: Sequence[float]) -> tuple[Interval, Change]:
    """The paired change of `metric` (arm − no defense, per seed) and the risk's arrow for it."""
    mean, lower, upper = interval(differences)
    change = Interval.of(mean, lower, upper, len(differences))
    moved = risk_change(
        metric.riskier, change.lower, change.upper, change.mean, metric.min_effect or 0.0
    )
    return change, moved


def select_attacks(
    dataset: Dataset, risks: Sequence[str] | None
) -> tuple[list[RiskAttack], dict[str, str]]:
    """The attacks that apply (all, or the named risks) and why the others are not measured."""
    attacks = risk_attacks()
    skipped = {risk.value: f"no attack: {why}" for risk, why in unmeasured().items()}
    chosen: list[RiskAttack] = []
    names = list(risks) if risks else [r.value for r in attacks]
    for name in names:
        if name not in {r.value for r in Risk}:
            raise unknown("risk", name, [r.value for r in attacks])
        risk = Risk(name)
        if risk not in attacks:
            raise DefconError(f"risk '{name}' cannot be measured: {UNMEASURED[risk]}")
        attack = attacks[risk]()
        problem = attack.refusal(dataset)
        if problem is None and attack.named_only and not risks:
            problem = f"measured only when named (--risk {name}): {attack.named_only}"
        if problem is not None and risks:
            raise DefconError(f"risk '{name}' cannot be measured on {dataset.name}: {problem}")
        if problem is not None:
            skipped[name] = problem
        else:
            chosen.append(attack)
            skipped.update({f"{name}: {m}": why for m, why in attack.unreported(dataset).items()})
    if not chosen:
        raise DefconError(f"no risk can be measured on {dataset.name}")
    return chosen, skipped


class Auditor:
    """Runs audits on one composer (dataset, profile, cache)."""

    def __init__(self, composer: Composer) -> None:
        self.composer = composer

    def plan(self, names: Sequence[str]) -> tuple[list[str], str | None]:
        """The combination's order and Def\\Con label; raises DefconError where it cannot run."""
        composer = self.composer
        # building each defense makes a declaration without a mechanism fail here
        return plan_audit(names, composer.catalog, composer.facts(), require=composer.defense)

    def lab(self, names: Sequence[str], seed: int, env_seed_dataset: Dataset) -> Lab:
        """Cached victims (the arm's recipe on chosen rows) and shadows (plain recipe)."""
        runner = self.composer.runner

        def victim(rows: np.ndarray, tag: str, epochs: int) -> nn.Module:
            other = runner.on_rows(rows, tag, epochs)
            return other.run_pipeline(other.pipeline(names, seed, False)).model

        def shadow(split: Split, tag: str, epochs: int) -> nn.Module:
            return runner.shadow_model(seed, env_seed_dataset, split, tag, epochs)

        return Lab(victim=victim, shadow=shadow)

    def audit(
        self,
        names: Sequence[str],
        *,
        seeds: int | None = None,
        seed_start: int | None = None,
        risks: Sequence[str] | None = None,
    ) -> AuditRecord:
        """Measure every chosen risk (default: all that apply) on no defense, each defense
        alone and combined, over `seeds` seeds, and predict each change from the factors.
        A value not given is the composer's run settings' (else 3 seeds from seed 0)."""
        plan = self.composer.seed_plan(seeds, None, seed_start)
        seeds, seed_start = plan.seeds, plan.seed_start
        # A membership risk trains every arm in the profile's membership regime (Composer).
        chosen = select_attacks(self.composer.dataset(0), risks)[0]
        measures = any(a.risk is Risk.MEMBERSHIP_INFERENCE for a in chosen)
        with quiet_libraries(), self.composer.membership_regime(measures):
            return self._audit(names, seeds=seeds, seed_start=seed_start, risks=risks)

    def _attack(self, attack: RiskAttack) -> Reading:
        """A risk attack as a reading of every arm (cached with the arm's model)."""

        def read(arm: Arm, result: PipelineResult) -> dict[str, float]:
            lab = self.lab(arm.defenses, result.env.seed, result.env.dataset)
            return self.composer.runner.measurement(
                result, {"audit": attack.cache_key()},
                lambda: attack.run(result.model, result.env, lab), f"{attack.risk.value} attack",
            )  # fmt: skip

        return Reading(attack.risk.value, read)

    def _audit(
        self, names: Sequence[str], *, seeds: int, seed_start: int, risks: Sequence[str] | None
    ) -> AuditRecord:
        started = time.perf_counter()
        composer = self.composer
        before = dict(composer.cache.seconds)
        order, label = self.plan(names)
        attacks, skipped = select_attacks(composer.dataset(0), risks)
        # One comparison per adversary: the poisoner trains only with the poisoning risk's
        # models; clean accuracy is read without it.
        comparisons = [
            ArmComparison(
                composer,
                order,
                poisoned=poisoned,
                clean=not poisoned,
                own_metrics=False,
                readings=[self._attack(a) for a in attacks if a.poisoned is poisoned],
            )  # fmt: skip
            for poisoned in sorted({a.poisoned for a in attacks} | {False})
        ]
        arms = {arm.label: list(arm.defenses) for arm in comparisons[0].arms}
        seed_list = list(range(seed_start, seed_start + seeds))
        for index, seed in enumerate(seed_list):
            composer.log(f"seed {index + 1}/{seeds}: auditing {' → '.join(order) or NO_DEFENSE}")
            for comparison in comparisons:
                comparison.add_seed(seed)
        values: dict[tuple[str, str], list[float]] = {}
        for comparison in comparisons:
            for (arm, _), readings in comparison.readings.items():
                for measured in readings:
                    for metric, value in measured.items():
                        values.setdefault((arm, metric), []).append(value)
        clean = comparisons[0].clean
        metrics = []
        for attack in attacks:
            for metric in attack.metrics_for(composer.dataset(seed_list[0])):
                base = values[(NO_DEFENSE, metric.name)]
                change, moved = {}, {}
                for arm in arms:
                    if arm == NO_DEFENSE:
                        continue
                    diffs = [a - b for a, b in zip(values[(arm, metric.name)], base, strict=True)]
                    change[arm], moved[arm] = judge_change(metric, diffs)
                metrics.append(
                    MetricAudit(
                        risk=attack.risk,
                        metric=metric.name,
                        riskier=metric.riskier,
                        primary=metric.primary,
                        undefined=metric.undefined,
                        min_effect=metric.min_effect,
                        values={arm: Summary.of(values[(arm, metric.name)]) for arm in arms},
                        change=change,
                        risk_change=moved,
                    )  # fmt: skip
                )
        catalog = composer.catalog
        predictions = {
            arm: {
                a.risk.value: predict_combination([catalog[n] for n in arm_names], a.risk)
                for a in attacks
            }
            for arm, arm_names in arms.items()
            if arm_names
        }
        spent = {
            k: round(v - before.get(k, 0.0), 2)
            for k, v in composer.cache.seconds.items()
            if v - before.get(k, 0.0) > 0
        }
        return AuditRecord(
            defenses=tuple(names), order=tuple(order), dataset=composer.dataset_name,
            profile=composer.profile.name, seeds=tuple(seed_list), arms=tuple(arms),
            checker_label=label, risks=tuple(a.risk for a in attacks),
            references={a.risk.value: a.reference for a in attacks}, not_measured=skipped,
            metrics=tuple(metrics),
            configs={n: dict(c) for n, c in composer.configs.items() if n in order},
            clean_accuracy={arm: Summary.of(clean[arm]) for arm in arms},
            predictions=predictions, code=f"{core_code()}+{risks_code()}", versions=versions(),
            wall_time_s=round(time.perf_counter() - started, 2), cache=composer.cache.stats(),
            seconds=spent, notices=data_and_model_notices(composer.runner, order, seed_start),
        )  # fmt: skip


# --------------------------------------------------------------------------- presentation


def audit_stem(record: AuditRecord) -> str:
    combo = "+".join(record.order) or "no_defense"
    return f"audit-{record.dataset}-{record.profile}-seeds{record.seeds[0]}x{len(record.seeds)}-{combo}"


def _counts(values: Summary) -> str:
    return "n = " + ", ".join("n/a" if v is None else f"{v:g}" for v in values.values)


def audit_table(record: AuditRecord) -> Table:
    """Risk metrics by arm: mean ± std, measured risk change vs no defense, predicted change."""
    n = len(record.seeds)
    table = Table(
        title=(
            f"Audit of {' → '.join(record.order) or 'the undefended model'} on {record.dataset} "
            f"({record.profile} profile, {n} seed{'s' if n > 1 else ''}, mean ± std; "
            "risk vs no defense: measured / predicted)"
        ),
        title_justify="left",
    )
    table.add_column("risk", no_wrap=True)
    table.add_column("metric (riskier)", no_wrap=True)
    table.add_column(NO_DEFENSE, justify="right")
    for arm in record.arms[1:]:
        table.add_column(arm, justify="right")
    for m in record.metrics:
        size = "" if m.min_effect is None else f" (±{m.min_effect:g})"
        row = [
            m.risk.value if m.primary else "",
            f"{m.metric} {ARROW.get(m.riskier, '(count)')}{size}",
        ]
        if m.riskier is None:  # a count: per-seed values, no direction to read
            row += [_counts(m.values[arm]) for arm in record.arms]
            table.add_row(*row)
            continue
        row.append(str(m.values[NO_DEFENSE]))
        for arm in record.arms[1:]:
            cell = f"{m.values[arm]}  {CHANGE_SYMBOL[m.risk_change[arm]]}"
            if m.primary:
                cell += f" / {record.predictions[arm][m.risk.value].symbol}"
            row.append(cell)
        table.add_row(*row)
    table.add_section()
    table.add_row(
        "utility", "clean accuracy", *(str(record.clean_accuracy[arm]) for arm in record.arms)
    )
    return table


def print_audit(record: AuditRecord, console: Console) -> None:
    for line in notice_lines(record.notices):  # what defcon changed, before the table
        console.print(line, markup=False, highlight=False)
    if record.configs:
        console.print(f"settings: {settings_text(record.configs)}", markup=False)
    console.print(audit_table(record))
    console.print(
        "measured: ↑ the risk rose, ↓ it fell, – no change (paired interval over seeds "
        "includes 0, or the mean change is smaller than the metric's practical size, shown as "
        "±size beside it); predicted (primary metric, SoK guideline on the factor declarations): "
        f"↑ ↓, {SYMBOL['silent']} silent"
    )
    for arm, by_risk in record.predictions.items():
        for risk, p in by_risk.items():
            if p.direction != "silent" and p.basis != "mitigates":
                console.print(f"  predicted {arm} → {risk} {p.symbol}: {p.reason}", highlight=False)
    for m in record.metrics:
        if m.undefined and any(None in s.values for s in m.values.values()):
            console.print(f"  {m.metric} n/a on some seed: {m.undefined}", highlight=False)
    for risk, why in record.not_measured.items():
        console.print(f"[dim]not measured: {risk} ({why})[/]")
    if record.checker_label is not None:
        console.print(f"Def\\Con predicts the combination {record.checker_label}.")
    c = record.cache
    console.print(
        f"Wall time {record.wall_time_s:.1f} s; cache: {c['models_trained']} models trained, "
        f"{c['models_reused']} reused; {c['measurements_computed']} measurements computed, "
        f"{c['measurements_reused']} reused"
    )


def heatmap(record: AuditRecord, path: Path | str) -> Path:
    """Arms × risks: the primary metric's change vs no defense, signed so red = more risk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from defcon.report.reports import save_figure

    arms = list(record.arms[1:]) or [NO_DEFENSE]
    risks = list(record.risks)
    grid = np.zeros((len(arms), len(risks)))
    for j, risk in enumerate(risks):
        m = record.primary(risk)
        sign = 1.0 if m.riskier is Direction.HIGHER else -1.0
        for i, arm in enumerate(arms):
            change = m.change.get(arm)
            grid[i, j] = sign * (change.mean or 0.0) if change is not None else 0.0
    bound = max(float(np.abs(grid).max()), 1e-6)
    fig, ax = plt.subplots(figsize=(1.3 * len(risks) + 2.5, 0.6 * len(arms) + 2.0))
    ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(risks)), [r.value.replace("_", "\n") for r in risks], fontsize=8)
    ax.set_yticks(range(len(arms)), arms, fontsize=8)
    for i, arm in enumerate(arms):
        for j, risk in enumerate(risks):
            m = record.primary(risk)
            measured = CHANGE_SYMBOL[m.risk_change.get(arm, "none")]
            predicted = record.predictions.get(arm, {}).get(risk.value)
            text = f"{grid[i, j]:+.3f}\n{measured} / {predicted.symbol if predicted else '·'}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_title(
        f"risk change vs no defense on {record.dataset} (red: more risk; measured / predicted)",
        fontsize=9,
    )
    return save_figure(fig, path)


def save_audit(record: AuditRecord, path: Path | str) -> Path:
    atomic_write_text(path, record.model_dump_json(indent=2) + "\n")
    return Path(path)
