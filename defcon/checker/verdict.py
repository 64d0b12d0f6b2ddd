"""What a technique answers about a combination: a label, the order to apply, and the evidence.

Verdicts are frozen pydantic models so that the CLI's `--json`, the composer's records and the
benchmark all share one serialisation (`model_dump(mode="json")` / `model_validate`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from defcon.vocabulary import FACTOR_DESCRIPTIONS, Arrow, Factor, Risk, Slot, Stage

Label = Literal["effective", "ineffective"]
Reported = Literal["effective", "ineffective", "uncertain"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Conflict(_Frozen):
    """`earlier` relies on `risk`, and `later`, applied after it, mitigates that risk.

    For two defenses of one stage that no ordering can reconcile, `earlier`/`later` name the
    conflicting ordered pair (the user of the risk placed before its mitigator).
    """

    earlier: str
    earlier_stage: Stage
    risk: Risk
    later: str
    later_stage: Stage
    reason: str  # the earlier defense's declared reason for using the risk

    def sentence(self) -> str:
        """One plain-English sentence, as the CLI and explanations print it."""
        return (
            f"{self.earlier} ({self.earlier_stage}) uses {self.risk} — {self.reason} — "
            f"which {self.later} ({self.later_stage}) mitigates, so applying {self.later} "
            f"after {self.earlier} removes what {self.earlier} relies on"
        )


class Precedence(_Frozen):
    """Within one stage, `before` must be applied before `after`: it mitigates a risk `after` uses."""

    stage: Stage
    before: str
    after: str
    risk: Risk


class StructuralClash(_Frozen):
    """In-training defenses that cannot share one training loop unchanged: both need the same
    exclusive slot, or one declares it cannot run beside a slot the other fills (`reason`).

    A mechanical problem, reported apart from conflicts: it does not change a technique's label,
    and the composer refuses it before any training.
    """

    slot: Slot
    defenses: tuple[str, ...]
    reason: str = (
        ""  # set for a declared exclusion: defenses[0] excludes the slot defenses[1] fills
    )

    def sentence(self) -> str:
        if self.reason:
            excluder, filler = self.defenses
            return (
                f"{excluder} cannot train beside {filler}, which fills the training-loop slot "
                f"'{self.slot}': {self.reason}"
            )
        *first, last = self.defenses
        who = f"{', '.join(first)} and {last} {'both' if len(first) == 1 else 'all'}"
        return (
            f"{who} need the exclusive training-loop slot '{self.slot}', so they cannot share "
            "one training loop unchanged"
        )


class FactorChain(_Frozen):
    """`mover` moves `factor` in direction `moved`; `dependent`'s effectiveness goes with the
    factor in direction `needed` (opposite), so the combination lowers it."""

    mover: str
    factor: Factor
    moved: Arrow
    dependent: str
    needed: Arrow
    mover_reference: str
    dependent_reference: str

    def sentence(self) -> str:
        what = FACTOR_DESCRIPTIONS[self.factor]
        rises = "rises" if self.needed is Arrow.UP else "falls"
        return (
            f"{self.mover} moves {self.factor.value}{self.moved.symbol} ({what}), and "
            f"{self.dependent}'s effectiveness {rises} with {self.factor.value}"
        )


class Verdict(_Frozen):
    """A technique's prediction for one combination of defenses."""

    technique: str
    label: Label
    defenses: tuple[str, ...]  # sorted by name
    order: tuple[str, ...]  # the order to apply: stages pre → in → post, each in its chosen order
    stages: dict[str, tuple[str, ...]]  # non-empty stages in pipeline order → their order
    conflicts: tuple[Conflict, ...] = ()
    precedences: tuple[Precedence, ...] = ()  # the same-stage constraints that fixed the order
    clashes: tuple[StructuralClash, ...] = ()
    factor_chains: tuple[FactorChain, ...] = ()  # the `factors` technique's evidence
    weak_chains: tuple[FactorChain, ...] = ()  # harmful chains not counted (outweighed, tied)
    explanation: str
    # How strongly the technique's own evidence supports `label` (each technique documents its
    # scale; not a calibrated probability). Defaults keep verdicts stored before it loadable.
    confidence: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    # True: the evidence is too weak to decide; `label` is then only the technique's lean.
    uncertain: bool = False

    @property
    def effective(self) -> bool:
        return self.label == "effective"

    @property
    def reported(self) -> Reported:
        """What `check` reports: the label, or `uncertain` where the technique abstains."""
        return "uncertain" if self.uncertain else self.label

    @property
    def composable(self) -> bool:
        """Whether the in-training defenses can share one training loop (no structural clash)."""
        return not self.clashes
