"""The JSON record of one composition: what was run, what was measured, what was concluded."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from defcon.effectiveness import CONCLUSIVE, DefenseOutcome, Label, MetricVerdict, Summary
from defcon.planning.notices import Notices
from defcon.vocabulary import Stage

Prediction = Literal["effective", "ineffective"]

SCHEMA_VERSION = 1  # raise it when a change to the record's fields changes what they mean

_VERSIONED = (
    "defcon",
    "torch",
    "opacus",
    "fairlearn",
    "captum",
    "torchattacks",
    "numpy",
    "scikit-learn",
)


class DefenseResult(BaseModel):
    """One defense of the combination: each of its metrics over the three arms, and its outcome."""

    model_config = ConfigDict(frozen=True)

    defense: str
    stage: Stage
    metrics: tuple[MetricVerdict, ...]
    outcome: DefenseOutcome
    clean_accuracy_alone: Summary

    @property
    def effective(self) -> bool:
        """False only when the defense measurably dropped."""
        return self.outcome != "dropped"


class RecordHeader(BaseModel):
    """What every record (composition or audit) opens with: which defenses ran, in which order,
    on which data, profile and seeds. Field names and defaults are those of the records already
    written, so every old record still loads."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = Field(
        default=1, ge=1, exclude=True, description="the record format (not written by audits)"
    )
    defenses: tuple[str, ...]
    order: tuple[str, ...]
    dataset: str
    profile: str
    seeds: tuple[int, ...]


class CompositionRecord(RecordHeader):
    """Everything about one measured combination; written atomically as JSON.

    Every arm (no defense, each defense alone, the combination) ran under `scenario`. `label` is
    one of effective, ineffective, inconclusive, not_effective_alone (see defcon.effectiveness).
    """

    schema_version: int = Field(
        default=1, ge=1, description="the record format; absent (records before it): 1"
    )
    seed_start: int = 0
    max_seeds: int = 0
    scenario: tuple[str, ...] = Field(description="threats active in every arm")
    results: tuple[DefenseResult, ...]
    clean_accuracy_no_defense: Summary
    clean_accuracy_combined: Summary
    factor_probes: dict[str, dict[str, Summary]] = Field(
        default_factory=dict,
        description="arm (no_defense, a defense alone, combined) → factor probe → over seeds "
        "(defcon.engine.probes)",
    )
    label: Label
    predicted: dict[str, Prediction]
    abstained: tuple[str, ...] = Field(
        default=(),
        description="techniques that reported `uncertain`: their `predicted` label is only "
        "their lean (records before abstention: none)",
    )
    forced: bool
    tolerances: dict[str, float]
    configs: dict[str, dict] = Field(default_factory=dict)
    threads: int = 1
    device: str = Field(default="cpu", description="where the models computed (cpu, cuda:0, …)")
    model: str | None = Field(
        default=None, description="the user's model factory 'module:function' (None: defcon's)"
    )
    dataset_sha256: str | None = Field(
        default=None, description="content hash of a user's dataset (None: a built-in one)"
    )
    code: str = ""
    versions: dict[str, str]
    wall_time_s: float
    cache: dict[str, int]
    seconds: dict[str, float] = Field(
        default_factory=dict, description="compute time of this run's cache misses, by what"
    )
    warnings: tuple[str, ...] = ()
    unreliable: tuple[str, ...] = Field(
        default=(),
        description="why the undefended model is underfit (defcon.measure.reliability); non-empty: the "
        "verdict is unreliable and never scored",
    )
    training: dict[str, float] = Field(
        default_factory=dict,
        description="epochs, lr and batch_size the models trained with (profile + RunSettings)",
    )
    undefended_facts: dict[str, Summary] = Field(
        default_factory=dict,
        description="the undefended model's training facts over the seeds (last-epoch "
        "validation gain, swing, …): what the reliability check read, so it can be re-derived",
    )
    defended_facts: dict[str, dict[str, Summary]] = Field(
        default_factory=dict,
        description="arm (a defense alone, combined) → the facts its training and post-training "
        "recorded over the seeds (DP-SGD's ε, which records threshold_optimizer fitted on, …); "
        "empty in records measured before it was kept",
    )
    alternatives: tuple[tuple[str, ...], ...] = Field(
        default=(),
        description="after a predicted conflict (--force): conflict-free combinations for the "
        "same risks, each in the order to apply it (defcon.planning.planner.alternatives)",
    )
    notices: Notices = Field(
        default=(),
        description="what defcon changed in the data or model, and whether each defense acted "
        "(defcon.planning.notices)",
    )
    order_choice: Literal["checker", "given"] = Field(
        default="checker",
        description="who chose the order within each stage: the checker, or the user (--order)",
    )

    @property
    def conclusive(self) -> bool:
        return self.label in CONCLUSIVE and not self.unreliable

    def result(self, defense: str) -> DefenseResult:
        for result in self.results:
            if result.defense == defense:
                return result
        raise KeyError(defense)

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per defense metric: each arm's mean and std, the gain
        and the drop with their intervals, the tolerance applied and the outcome."""
        import pandas as pd

        rows = []
        for result in self.results:
            for verdict in result.metrics:
                row: dict[str, Any] = {
                    "defense": result.defense, "stage": result.stage, "metric": verdict.metric,
                    "direction": verdict.direction, "judged": verdict.judged,
                }  # fmt: skip
                for arm in ("no_defense", "alone", "combined"):
                    summary = getattr(verdict, arm)
                    row[f"{arm}_mean"], row[f"{arm}_std"] = summary.center, summary.std
                for change in ("gain", "drop"):
                    interval = getattr(verdict, change)
                    row[change], row[f"{change}_lower"], row[f"{change}_upper"] = (
                        interval.mean, interval.lower, interval.upper,
                    )  # fmt: skip
                row["tolerance"], row["outcome"] = verdict.tolerance, verdict.outcome
                row["defense_outcome"] = result.outcome
                rows.append(row)
        frame = pd.DataFrame(rows)
        frame.attrs = {"dataset": self.dataset, "label": self.label, "seeds": self.seeds}
        return frame


def readable(record: CompositionRecord, where: str) -> CompositionRecord:
    """`record`, or a ValueError when it was written by a newer defcon (a schema version this
    code does not know, whose fields may mean something else)."""
    if record.schema_version > SCHEMA_VERSION:
        raise ValueError(
            f"{where}: record schema version {record.schema_version} is newer than this defcon "
            f"reads ({SCHEMA_VERSION}); update defcon"
        )
    return record


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape the numbers."""
    found = {"python": platform.python_version()}
    for package in _VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def repredicted(record: CompositionRecord) -> CompositionRecord:
    """The record with every registered technique's prediction recomputed from the built-in
    declarations and the dataset kind (a prediction is a pure function of them, so a technique added or
    re-declared after the measurement is scored on it). Records of defenses outside the
    built-in catalog keep their stored predictions."""
    from defcon.catalog import builtin_catalog
    from defcon.checker.api import predictions
    from defcon.planning.dataset_info import datasets

    catalog = builtin_catalog()
    if not all(name in catalog for name in record.defenses):
        return record
    specs = catalog.resolve(record.defenses)
    entry = datasets().get(record.dataset)
    predicted, abstained = predictions(specs, catalog, entry.kind if entry else None)
    return record.model_copy(update={"predicted": predicted, "abstained": abstained})


def rejudged(record: CompositionRecord) -> CompositionRecord:
    """The record with every verdict, outcome and label recomputed by the current rule from its
    stored per-seed values (the measurements themselves are not touched).

    For records measured under an earlier version of the verdict rule: the values, seeds and
    tolerances stay; only the judgement is redone.
    """
    from defcon.effectiveness import combination_label, defense_outcome, judge
    from defcon.vocabulary import Metric

    results = []
    for result in record.results:
        verdicts = tuple(
            judge(
                v.defense,
                Metric(
                    name=v.metric,
                    direction=v.direction,
                    tolerance=v.declared_tolerance,
                    judged=v.judged,
                ),  # fmt: skip
                v.alone.raw(),
                v.combined.raw(),
                v.no_defense.raw(),
                confidence=v.confidence,  # the looks the measurement made stay its own
            )
            for v in result.metrics
        )
        results.append(
            result.model_copy(update={"metrics": verdicts, "outcome": defense_outcome(verdicts)})
        )
    label = combination_label([r.outcome for r in results])
    return record.model_copy(update={"results": tuple(results), "label": label})
