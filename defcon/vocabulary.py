"""The shared vocabulary of defcon: stages, risks, slots and the declaration of a defense.

Everything the conflict checker reasons about is declared here as data (frozen pydantic models),
so that a practitioner can declare a defense of their own without writing any training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator


class Stage(StrEnum):
    """Where in the ML pipeline a defense acts."""

    PRE = "pre"
    IN = "in"
    POST = "post"

    @property
    def position(self) -> int:
        """Pipeline order: pre (0) < in (1) < post (2)."""
        return _STAGE_ORDER[self]

    @property
    def description(self) -> str:
        return _STAGE_DESCRIPTIONS[self]


_STAGE_ORDER = {Stage.PRE: 0, Stage.IN: 1, Stage.POST: 2}
_STAGE_DESCRIPTIONS = {
    Stage.PRE: "pre-training: transforms the training data",
    Stage.IN: "in-training: changes the training procedure",
    Stage.POST: "post-training: transforms the trained model or wraps its outputs",
}


class Risk(StrEnum):
    """Risks to an ML model (Duddu, Szyller & Asokan, SoK S&P 2024)."""

    EVASION = "evasion"
    POISONING = "poisoning"
    MODEL_THEFT = "model_theft"
    DATA_MISUSE = "data_misuse"
    MEMBERSHIP_INFERENCE = "membership_inference"
    ATTRIBUTE_INFERENCE = "attribute_inference"
    DATA_RECONSTRUCTION = "data_reconstruction"
    DISTRIBUTION_INFERENCE = "distribution_inference"
    DISCRIMINATION = "discrimination"
    OPACITY = "opacity"

    @property
    def description(self) -> str:
        return RISK_DESCRIPTIONS[self]


RISK_DESCRIPTIONS: dict[Risk, str] = {
    Risk.EVASION: "adversarial examples crafted at test time flip the model's predictions",
    Risk.POISONING: "tampered training data (incl. backdoor triggers) changes what the model learns",
    Risk.MODEL_THEFT: "the model is copied or extracted through its API and used without consent",
    Risk.DATA_MISUSE: "a dataset is used to train a model without its owner's permission",
    Risk.MEMBERSHIP_INFERENCE: "an attacker tells whether a record was in the training set",
    Risk.ATTRIBUTE_INFERENCE: "an attacker infers a sensitive attribute of a record from the model",
    Risk.DATA_RECONSTRUCTION: "an attacker reconstructs training records from the model",
    Risk.DISTRIBUTION_INFERENCE: "an attacker infers global properties of the training distribution",
    Risk.DISCRIMINATION: "the model behaves unfairly towards groups defined by a sensitive attribute",
    Risk.OPACITY: "the model's decisions cannot be explained to the people they affect",
}


class Slot(StrEnum):
    """Named places in the one training loop that an in-training defense can fill."""

    BATCH_TRANSFORM = "batch_transform"
    LOSS_TERM = "loss_term"
    PRIVACY_WRAPPER = "privacy_wrapper"
    PARAMETER_NOISE = "parameter_noise"
    FINETUNE_PHASE = "finetune_phase"

    @property
    def exclusive(self) -> bool:
        """Whether at most one defense can fill this slot (two would need to change each other)."""
        return self in EXCLUSIVE_SLOTS

    @property
    def description(self) -> str:
        return _SLOT_DESCRIPTIONS[self]


EXCLUSIVE_SLOTS: frozenset[Slot] = frozenset(
    {Slot.BATCH_TRANSFORM, Slot.PRIVACY_WRAPPER, Slot.PARAMETER_NOISE, Slot.FINETUNE_PHASE}
)
_SLOT_DESCRIPTIONS = {
    Slot.BATCH_TRANSFORM: "replaces each training batch (e.g. by adversarial examples)",
    Slot.LOSS_TERM: "adds a term to the training loss (terms from several defenses add up)",
    Slot.PRIVACY_WRAPPER: "wraps model, optimizer and loader (e.g. Opacus' PrivacyEngine)",
    Slot.PARAMETER_NOISE: "perturbs the parameters around each step (e.g. noise training)",
    Slot.FINETUNE_PHASE: "a phase after the main loop that re-trains part of the model",
}


class Direction(StrEnum):
    """Which way a metric improves."""

    HIGHER = "higher"
    LOWER = "lower"


class DataKind(StrEnum):
    """The kinds of data a defense's mechanism applies to."""

    IMAGE = "image"
    TABULAR = "tabular"


class Threat(StrEnum):
    """The adversary a defense's effectiveness is measured against."""

    EVASION_ATTACKER = "evasion_attacker"
    POISONER = "poisoner"
    MODEL_THIEF = "model_thief"
    DATA_THIEF = "data_thief"
    MEMBERSHIP_ATTACKER = "membership_attacker"
    UNFAIR_DATA = "unfair_data"
    AUDITOR = "auditor"


class Factor(StrEnum):
    """What a defense moves and what a defense's effectiveness depends on.

    The first ten are the SoK's factors (Duddu, Szyller, Asokan, "SoK: Unintended Interactions
    among Machine Learning Defenses and Risks", IEEE S&P 2024, Table 2; docs/factors.md).
    The last five are mechanical facts the composer knows about a pipeline.
    """

    D1 = "D1"
    D2 = "D2"
    D3 = "D3"
    D4 = "D4"
    O1 = "O1"
    O2_1 = "O2.1"
    O2_2 = "O2.2"
    O2_3 = "O2.3"
    O3 = "O3"
    M1 = "M1"
    BATCH_NORMALISATION = "batch_normalisation"
    API_WRAPPER = "api_wrapper"
    RETRAINED_AFTER_MAIN_TRAINING = "retrained_after_main_training"
    LOOP_MODEL_WRAPPER = "loop_model_wrapper"
    ROWS_PER_RECORD = "rows_per_record"

    @property
    def description(self) -> str:
        return FACTOR_DESCRIPTIONS[self]

    @property
    def mechanical(self) -> bool:
        return self in MECHANICAL_FACTORS


FACTOR_DESCRIPTIONS: dict[Factor, str] = {
    Factor.D1: "training-set size",
    Factor.D2: "tail length of the training distribution (rare or atypical records memorised)",
    Factor.D3: "number of input attributes",
    Factor.D4: "priority of learning stable attributes",
    Factor.O1: "curvature smoothness of the objective (flat rather than sharp loss around data)",
    Factor.O2_1: "distinguishability of the model's observables on members vs non-members",
    Factor.O2_2: "distinguishability of the model's observables across subgroups",
    Factor.O2_3: "distinguishability of the model vs models derived from it (not independent ones)",
    Factor.O3: "distance of the training data to the decision boundary",
    Factor.M1: "model capacity",
    Factor.BATCH_NORMALISATION: "the network uses BatchNorm (↓: another normalisation is forced)",
    Factor.API_WRAPPER: "a wrapper placed in front of the prediction API changes what it serves",
    Factor.RETRAINED_AFTER_MAIN_TRAINING: "parameters are changed after the main training",
    Factor.LOOP_MODEL_WRAPPER: "a model wrapper sits in the training loop (e.g. Opacus' hooks)",
    Factor.ROWS_PER_RECORD: "training rows one original record contributes (appended copies)",
}
MECHANICAL_FACTORS: frozenset[Factor] = frozenset(
    {
        Factor.BATCH_NORMALISATION,
        Factor.API_WRAPPER,
        Factor.RETRAINED_AFTER_MAIN_TRAINING,
        Factor.LOOP_MODEL_WRAPPER,
        Factor.ROWS_PER_RECORD,
    }
)


OBJECTIVE_FACTORS: frozenset[Factor] = frozenset(
    {Factor.O1, Factor.O2_1, Factor.O2_2, Factor.O2_3, Factor.O3}
)


def sok_guideline(shared: Sequence[tuple[Factor, bool]]) -> bool | None:
    """The SoK's guideline (§4.4) over the factors a defense and a target share, each given as
    (factor, whether it pushes the target up): all agreeing decide; when they disagree, the
    objective's factors (O1, O2.x, O3) decide by majority; a tie, or nothing shared, is silent
    (None). One rule for defense→defense (`factors`) and defense→risk (`audit`) predictions."""
    if not shared:
        return None
    ups = {up for _, up in shared}
    if len(ups) == 1:
        return ups.pop()
    objective = [up for factor, up in shared if factor in OBJECTIVE_FACTORS]
    up = sum(objective)
    down = len(objective) - up
    return None if up == down else up > down


class Arrow(StrEnum):
    """A factor's direction: up (↑) or down (↓)."""

    UP = "up"
    DOWN = "down"

    @property
    def symbol(self) -> str:
        return "↑" if self is Arrow.UP else "↓"


Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class Metric(_Frozen):
    """How a defense's effectiveness is measured, and how much it may degrade in combination."""

    name: Name
    direction: Direction
    tolerance: float = Field(
        ge=0, allow_inf_nan=False, description="largest tolerated change in the bad direction"
    )
    description: str = ""
    judged: bool = Field(
        default=True,
        description="False for a diagnostic: measured and reported beside the verdict, never "
        "part of it (e.g. a consistency check of what is served)",
    )

    def worse_by(self, alone: float, combined: float) -> float:
        """How much worse `combined` is than `alone` (negative when it improved)."""
        return alone - combined if self.direction is Direction.HIGHER else combined - alone


class RiskUse(_Frozen):
    """A risk a defense relies on, with the reason its mechanism needs it."""

    risk: Risk
    reason: str = Field(min_length=1)


class FactorClaim(_Frozen):
    """One arrow of a defense's factor declaration, with the source that supports it.

    In `moves`: when the defense is effective, the factor goes `direction`. In `depends_on`:
    the defense's effectiveness rises with the factor (`up`) or falls with it (`down`); `reads`
    marks the dependencies that are definitions rather than correlations (the metric is computed
    from the factor, as robust accuracy is from the distance to the boundary).
    """

    factor: Factor
    direction: Arrow
    reference: str = Field(min_length=1, description="the publication (or mechanism) it rests on")
    reason: str = Field(min_length=1)
    reads: bool = Field(
        default=False,
        description="depends_on only, objective factors only: the defense's metric is computed "
        "from this factor, so a move against it lowers the metric by definition",
    )
    data_kinds: frozenset[DataKind] | None = Field(
        default=None,
        description="the data kinds the arrow is claimed for (None: every kind); a scope needs "
        "`scope_reason`, with its reference",
    )
    scope_reason: str = Field(default="", description="why the arrow holds only on `data_kinds`")
    contested: str = Field(
        default="",
        description="evidence against the arrow, with its reference (e.g. the factor probes "
        "measuring the opposite shift): a label that rests on a contested arrow is uncertain",
    )

    @model_validator(mode="after")
    def _scoped(self) -> FactorClaim:
        if self.data_kinds is not None and (not self.data_kinds or not self.scope_reason):
            raise ValueError(
                f"the {self.arrow()} claim scopes data_kinds without a scope_reason (or to no "
                "kind); a scope names one or more of image, tabular and says why, with its "
                "reference"
            )
        return self

    def arrow(self) -> str:
        return f"{self.factor.value}{self.direction.symbol}"

    def applies_to(self, kind: DataKind | None) -> bool | None:
        """Whether the arrow is claimed for `kind`: None when it is in doubt there (contested,
        or scoped while the kind is unknown)."""
        if self.data_kinds is not None and kind is not None and kind not in self.data_kinds:
            return False
        if self.contested or (self.data_kinds is not None and kind is None):
            return None
        return True


class SlotExclusion(_Frozen):
    """A training-loop slot this defense cannot run beside (filled by another defense), and why."""

    slot: Slot
    reason: str = Field(min_length=1)


class NotApplicable(_Frozen):
    """A data kind the mechanism runs on but cannot be effective on alone, and why (cited)."""

    kind: DataKind
    reason: str = Field(min_length=1)


class DefenseSpec(_Frozen):
    """The declaration of one defense: what Def\\Con and the composer know about it."""

    name: Name
    title: str = Field(min_length=1)
    stage: Stage
    mitigates: frozenset[Risk] = Field(min_length=1)
    uses: tuple[RiskUse, ...] = ()
    slots: frozenset[Slot] = frozenset()
    excludes: tuple[SlotExclusion, ...] = Field(
        default=(),
        description="slots that, filled by another in-training defense, make this one unable to "
        "run in the same loop (a mechanical incompatibility, with the reason)",
    )
    metrics: tuple[Metric, ...] = Field(min_length=1)
    moves: tuple[FactorClaim, ...] = Field(
        default=(), description="factors the defense moves when effective (docs/factors.md)"
    )
    depends_on: tuple[FactorClaim, ...] = Field(
        default=(), description="factors the defense's own effectiveness goes with"
    )
    data_kinds: frozenset[DataKind] = frozenset({DataKind.IMAGE, DataKind.TABULAR})
    not_applicable: tuple[NotApplicable, ...] = Field(
        default=(),
        description="data kinds the mechanism runs on but is not effective on, with the reason "
        "(with a citation): check and compose refuse it there before anything trains",
    )
    needs_sensitive_attribute: bool = False
    threats: frozenset[Threat] = frozenset()
    reference: str = ""
    implementation: str | None = Field(
        default=None, description="'package.module:Class' of the mechanism, if one exists"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DefenseSpec:
        both = self.mitigates & self.uses_risks
        if both:
            names = ", ".join(sorted(both))
            raise ValueError(f"defense '{self.name}' both uses and mitigates {names}")
        if len({u.risk for u in self.uses}) != len(self.uses):
            raise ValueError(f"defense '{self.name}' declares the same used risk twice")
        if self.slots and self.stage is not Stage.IN:
            raise ValueError(
                f"defense '{self.name}' fills training-loop slots but its stage is "
                f"'{self.stage}'; only in-training defenses have slots"
            )
        if self.excludes and self.stage is not Stage.IN:
            raise ValueError(
                f"defense '{self.name}' excludes training-loop slots but its stage is "
                f"'{self.stage}'; only in-training defenses share the loop"
            )
        if self.stage is Stage.IN and not self.slots:
            raise ValueError(
                f"in-training defense '{self.name}' must declare the slots it fills "
                f"(one of: {', '.join(s.value for s in Slot)})"
            )
        for field_name in ("moves", "depends_on"):
            factors = [claim.factor for claim in getattr(self, field_name)]
            if len(set(factors)) != len(factors):
                raise ValueError(f"defense '{self.name}' declares a factor twice in {field_name}")
        if any(claim.reads for claim in self.moves):
            raise ValueError(
                f"defense '{self.name}' marks a moved factor 'reads'; only a dependency can be "
                "read by the defense's metric"
            )
        for claim in self.depends_on:
            if claim.reads and claim.factor not in OBJECTIVE_FACTORS:
                raise ValueError(
                    f"defense '{self.name}' marks {claim.factor.value} 'reads'; a metric on the "
                    "served model can read only a factor of its objective "
                    f"({', '.join(sorted(f.value for f in OBJECTIVE_FACTORS))}), not of the "
                    "training data or the capacity"
                )
        if len({m.name for m in self.metrics}) != len(self.metrics):
            raise ValueError(f"defense '{self.name}' declares the same metric twice")
        return self

    @property
    def uses_risks(self) -> frozenset[Risk]:
        return frozenset(u.risk for u in self.uses)

    def reason_for(self, risk: Risk) -> str:
        """Why this defense relies on `risk`."""
        for use in self.uses:
            if use.risk is risk:
                return use.reason
        raise KeyError(risk)

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)
