"""`factors`: Def\\Con's risk rule plus conflicts through shared factors (docs/factors.md).

Every spec declares, with a reference per arrow, the factors it moves when effective (`moves`)
and the factors its own effectiveness goes with (`depends_on`). A defense M that moves a factor
against the direction another defense D's effectiveness needs lowers D's effectiveness: a
conflict, named as a chain (M moves f↓; D's effectiveness rises with f).

Where a factor's effect reaches (order and stage logic):
- model factors (the SoK's D1–D4, O1–O3, M1) and the mechanical facts of the trained model
  (normalisation, a wrapper in the loop, rows per record, a wrapper in front of the API) are
  properties of the model the pipeline serves: they reach every other defense of the
  combination, whatever the order — co-trained in-training defenses act together, a later
  defense acts on what an earlier one built, and every defense is measured on what is served;
- `retrained_after_main_training` (parameters changed after the main training) reaches only the
  defenses whose parameters were shaped before the change: pre- and in-training defenses, and
  post-training ones applied earlier in the order.

Several shared factors between M and D are weighed by the rules argued one by one in
docs/factors.md ("The rules, argued"); none cites a measured label:
- a harmful mechanical fact is a conflict on its own: a fact about the pipeline, not a
  correlation;
- so is a harmful move of a factor D's metric *reads* (`reads`: the metric is computed from it,
  as robust accuracy is from the distance to the boundary): a definition, not a correlation;
- otherwise the SoK's guideline (§4.4) decides over the learned factors: unanimous arrows
  decide, the objective's factors (O1, O2.x, O3) decide a disagreement by majority, and a tie
  leaves it silent, so the technique abstains (`uncertain`) rather than guess. A chain through
  data and model factors alone counts, with a lower confidence: the SoK ranks those factors
  below the objective's.
A claim scoped to data kinds (`data_kinds`) is left out on another kind; a label that rests on
a claim in doubt (`contested` by contrary evidence, or scoped while the kind is not given) is
`uncertain`.

No rule here names a defense: everything comes from the declarations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from defcon.checker.base import clash_text
from defcon.checker.defcon_technique import DefConTechnique
from defcon.checker.verdict import FactorChain, Label, Verdict
from defcon.vocabulary import (
    OBJECTIVE_FACTORS,
    DataKind,
    DefenseSpec,
    Factor,
    FactorClaim,
    Stage,
    sok_guideline,
)

FACT = 0.9  # a harmful mechanical fact, or a declared risk a later defense mitigates
DEFINITION = 0.8  # a harmful move of a factor the dependent's metric is computed from
OBJECTIVE = 0.7  # the SoK's guideline predicts a loss through a factor of the objective
DATA_MODEL = 0.6  # the guideline predicts a loss through data and model factors alone
NO_LINK = 0.7  # no declared factor of one defense moves against another's effectiveness
OUTWEIGHED = 0.6  # harmful links, outweighed under the guideline by helpful ones
ABSTAIN = 0.5  # a tie in the guideline, or the label rests on a claim scoped out of sight
"""The factors technique's confidence scale: an ordinal strength of the evidence that decided
the label (docs/factors.md), not a calibrated probability."""


@dataclass(frozen=True)
class _Link:
    moved: FactorClaim
    needed: FactorClaim

    @property
    def harmful(self) -> bool:
        return self.moved.direction is not self.needed.direction


def reaches(
    mover: DefenseSpec, dependent: DefenseSpec, factor: Factor, order: Sequence[str]
) -> bool:
    """Whether `mover`'s movement of `factor` acts on what `dependent`'s effectiveness reads."""
    if factor is not Factor.RETRAINED_AFTER_MAIN_TRAINING:
        return True
    if dependent.stage is not Stage.POST:
        return True  # its parameters were shaped in or before the main training
    return mover.stage is Stage.POST and order.index(dependent.name) < order.index(mover.name)


def _in_scope(claim: FactorClaim, kind: DataKind | None, unscoped: bool) -> bool:
    """Whether a claim counts: not where it is scoped out; a claim in doubt (contested, or
    scoped while the kind is unknown) counts iff `unscoped` (the technique weighs both ways
    and abstains where the labels differ)."""
    applies = claim.applies_to(kind)
    return unscoped if applies is None else applies


def _links(
    mover: DefenseSpec,
    dependent: DefenseSpec,
    order: Sequence[str],
    kind: DataKind | None = None,
    unscoped: bool = True,
) -> list[_Link]:
    return [
        _Link(moved, needed)
        for needed in dependent.depends_on
        for moved in mover.moves
        if moved.factor is needed.factor
        and reaches(mover, dependent, needed.factor, order)
        and _in_scope(moved, kind, unscoped)
        and _in_scope(needed, kind, unscoped)
    ]


def _chain(mover: DefenseSpec, dependent: DefenseSpec, link: _Link) -> FactorChain:
    return FactorChain(
        mover=mover.name,
        factor=link.moved.factor,
        moved=link.moved.direction,
        dependent=dependent.name,
        needed=link.needed.direction,
        mover_reference=link.moved.reference,
        dependent_reference=link.needed.reference,
    )


@dataclass(frozen=True)
class Weighing:
    """The evidence over every (mover, dependent) pair of a combination."""

    conflicting: tuple[FactorChain, ...]  # harmful chains of the pairs that predict a loss
    weak: tuple[FactorChain, ...]  # harmful chains not counted: outweighed or tied
    level: float  # the strongest level among the conflicting pairs (0 when none)
    tie: bool  # some pair's shared factors tie under the guideline
    outweighed: bool  # some pair has harmful links that the guideline outweighs


def weigh_pairs(
    specs: Sequence[DefenseSpec],
    order: Sequence[str],
    kind: DataKind | None = None,
    unscoped: bool = True,
) -> Weighing:
    """Weigh every ordered (mover, dependent) pair's shared factors (docs/factors.md)."""
    conflicting: list[FactorChain] = []
    weak: list[FactorChain] = []
    level, tie, outweighed = 0.0, False, False
    for dependent in specs:
        for mover in specs:
            if mover.name == dependent.name:
                continue
            links = _links(mover, dependent, order, kind, unscoped)
            harmful = [_chain(mover, dependent, link) for link in links if link.harmful]
            if not harmful:
                continue
            decided = decide(links)
            if decided > 0:
                conflicting.extend(harmful)
                level = max(level, decided)
            else:
                weak.extend(harmful)
                tie = tie or decided == 0
                outweighed = outweighed or decided < 0
    return Weighing(tuple(conflicting), tuple(weak), level, tie, outweighed)


def weigh(
    specs: Sequence[DefenseSpec], order: Sequence[str], kind: DataKind | None = None
) -> tuple[list[FactorChain], list[FactorChain]]:
    """(conflicting chains, chains not counted) over every (mover, dependent) pair."""
    weighing = weigh_pairs(specs, order, kind)
    return list(weighing.conflicting), list(weighing.weak)


def chains(specs: Sequence[DefenseSpec], order: Sequence[str]) -> list[FactorChain]:
    """Every (mover, dependent) pair whose shared factors predict a loss of effectiveness."""
    return weigh(specs, order)[0]


def decide(links: Sequence[_Link]) -> float:
    """One (mover, dependent) pair with at least one harmful link: the level of the evidence
    for a loss of effectiveness (> 0), 0 for a tie under the SoK's guideline, -1 when the
    guideline predicts no loss (the harmful links are outweighed)."""
    if any(link.harmful and link.moved.factor.mechanical for link in links):
        return FACT
    if any(link.harmful and link.needed.reads for link in links):
        return DEFINITION
    learned = [
        (link.moved.factor, link.harmful) for link in links if not link.moved.factor.mechanical
    ]
    guideline = sok_guideline(learned)
    if guideline is None:
        return 0.0
    if not guideline:
        return -1.0
    if any(harmful and factor in OBJECTIVE_FACTORS for factor, harmful in learned):
        return OBJECTIVE
    return DATA_MODEL


class FactorsTechnique:
    """Def\\Con's risk rule, plus conflicts through the factors the defenses declare."""

    name = "factors"
    summary = (
        "factors: Def\\Con's risk rule, plus a defense moving a factor against what another's "
        "effectiveness needs (SoK factors and mechanical facts)"
    )

    def __init__(self) -> None:
        self._risks = DefConTechnique(name=self.name)

    def check(
        self, specs: Sequence[DefenseSpec], data_kind: DataKind | str | None = None
    ) -> Verdict:
        """The verdict on `data_kind` (image or tabular) where given: claims scoped to other
        kinds are left out; unknown, a label that depends on a scoped claim is `uncertain`."""
        kind = DataKind(data_kind) if data_kind is not None else None
        risk_verdict = self._risks.check(specs)
        by_name = {spec.name: spec for spec in specs}
        ordered = [by_name[name] for name in risk_verdict.order]
        weighing = weigh_pairs(ordered, risk_verdict.order, kind)
        label, confidence, uncertain = _judge(risk_verdict, weighing)
        # would the label differ without the claims in doubt (contested, or scoped out of sight)?
        without = weigh_pairs(ordered, risk_verdict.order, kind, unscoped=False)
        contested = _judge(risk_verdict, without)[0] != label
        if contested:
            uncertain, confidence = True, ABSTAIN
        explanation = _explain(risk_verdict, weighing)
        if uncertain:
            explanation += _uncertain_text(label, contested)
        return risk_verdict.model_copy(
            update={
                "label": label,
                "factor_chains": weighing.conflicting,
                "weak_chains": weighing.weak,
                "explanation": explanation + clash_text(risk_verdict.clashes),
                "confidence": confidence,
                "uncertain": uncertain,
            }
        )


def _judge(risk_verdict: Verdict, weighing: Weighing) -> tuple[Label, float, bool]:
    """(label, confidence, uncertain) from the risk rule and the weighed factors."""
    if risk_verdict.conflicts or weighing.conflicting:
        level = max(weighing.level, FACT if risk_verdict.conflicts else 0.0)
        return "ineffective", level, False
    if weighing.tie:
        return "effective", ABSTAIN, True
    return "effective", OUTWEIGHED if weighing.outweighed else NO_LINK, False


def _uncertain_text(label: str, contested: bool) -> str:
    why = (
        "the label rests on a factor claim in doubt: contested by contrary evidence (defcon show "
        "NAME), or scoped to some data kinds while the data kind was not given (--data-kind, or "
        "check(..., data_kind=...))"
        if contested
        else "the SoK's guideline ties over some pair's shared factors"
    )
    return f" Uncertain: {why}; the technique leans {label}."


def _explain(risk_verdict: Verdict, weighing: Weighing) -> str:
    found, weak = weighing.conflicting, weighing.weak
    parts = []
    if risk_verdict.conflicts:
        parts.append(
            "Risks: "
            + "; ".join(
                f"{c.later} mitigates {c.risk}, which {c.earlier} relies on"
                for c in risk_verdict.conflicts
            )
            + "."
        )
    if found:
        shown = [chain.sentence() for chain in found[:4]]
        more = f" (and {len(found) - 4} more)" if len(found) > 4 else ""
        parts.append("Factors: " + "; ".join(shown) + more + ".")
    not_counted = (
        " Not counted, outweighed or tied under the SoK's guideline: "
        + "; ".join(chain.sentence() for chain in weak)
        + "."
        if weak
        else ""
    )
    if not parts:
        return (
            "The factors technique finds no conflict: no defense uses a risk a later one "
            "mitigates, and no defense's declared factors predict a loss of another's "
            "effectiveness. Apply them in this order: "
            f"{' → '.join(risk_verdict.order)}." + not_counted
        )
    losers = sorted({c.earlier for c in risk_verdict.conflicts} | {c.dependent for c in found})
    return (
        "The factors technique predicts a conflict. "
        + " ".join(parts)
        + f" Expected to lose effectiveness: {', '.join(losers)}."
        + f" Order: {' → '.join(risk_verdict.order)}."
        + not_counted
    )
