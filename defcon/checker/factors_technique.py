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

Several shared factors between M and D are weighed as the SoK's guideline says (§4.4): all
harmful gives a conflict, none harmful none; when they disagree, the factors of the objective
(O1, O2.x, O3) decide, and a tie leaves the guideline silent (no conflict). Two things decide
before the guideline:
- a harmful mechanical fact is a conflict on its own: it is a fact about the pipeline, not a
  correlation;
- so is a harmful move of a factor D's metric *reads* (`reads`: the metric is computed from it,
  as robust accuracy is from the distance to the boundary): a definition, not a correlation.
And one thing the guideline alone does not decide: a chain made only of data and model factors
(D1–D4, M1) is reported as a weak chain, not a conflict. The SoK's objective factors dominate
those of data and model, and it reports its guideline failing for rows with few factors; a
defense that changes a small part of the data (a key set) moves a data factor of the training
set, not the property of the model another defense's metric reads. These three refinements
were adopted after the benchmark's labels were seen (README: how the techniques were scored).

No rule here names a defense: everything comes from the declarations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from defcon.checker.base import clash_text
from defcon.checker.defcon_technique import DefConTechnique
from defcon.checker.verdict import FactorChain, Verdict
from defcon.vocabulary import (
    OBJECTIVE_FACTORS,
    DefenseSpec,
    Factor,
    FactorClaim,
    Stage,
    sok_guideline,
)


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


def _links(mover: DefenseSpec, dependent: DefenseSpec, order: Sequence[str]) -> list[_Link]:
    return [
        _Link(moved, needed)
        for needed in dependent.depends_on
        for moved in mover.moves
        if moved.factor is needed.factor and reaches(mover, dependent, needed.factor, order)
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


def weigh(
    specs: Sequence[DefenseSpec], order: Sequence[str]
) -> tuple[list[FactorChain], list[FactorChain]]:
    """(conflicting chains, weak chains): every (mover, dependent) pair with a harmful link,
    split by whether its shared factors predict a loss of effectiveness."""
    conflicting: list[FactorChain] = []
    weak: list[FactorChain] = []
    for dependent in specs:
        for mover in specs:
            if mover.name == dependent.name:
                continue
            links = _links(mover, dependent, order)
            harmful = [_chain(mover, dependent, link) for link in links if link.harmful]
            if not harmful:
                continue
            verdict = _conflicts(links)
            if verdict:
                conflicting.extend(harmful)
            elif verdict is None:
                weak.extend(harmful)
    return conflicting, weak


def chains(specs: Sequence[DefenseSpec], order: Sequence[str]) -> list[FactorChain]:
    """Every (mover, dependent) pair whose shared factors predict a loss of effectiveness."""
    return weigh(specs, order)[0]


def _conflicts(links: Sequence[_Link]) -> bool | None:
    """Whether one (mover, dependent) pair's shared factors predict a loss of effectiveness:
    True, False, or None for a weak chain (harmful through data and model factors only)."""
    if any(link.harmful and link.moved.factor.mechanical for link in links):
        return True
    if any(link.harmful and link.needed.reads for link in links):
        return True
    learned = [
        (link.moved.factor, link.harmful) for link in links if not link.moved.factor.mechanical
    ]
    if sok_guideline(learned) is not True:
        return False
    if any(harmful and factor in OBJECTIVE_FACTORS for factor, harmful in learned):
        return True
    return None


class FactorsTechnique:
    """Def\\Con's risk rule, plus conflicts through the factors the defenses declare."""

    name = "factors"
    summary = (
        "factors: Def\\Con's risk rule, plus a defense moving a factor against what another's "
        "effectiveness needs (SoK factors and mechanical facts)"
    )

    def __init__(self) -> None:
        self._risks = DefConTechnique(name=self.name)

    def check(self, specs: Sequence[DefenseSpec]) -> Verdict:
        risk_verdict = self._risks.check(specs)
        by_name = {spec.name: spec for spec in specs}
        ordered = [by_name[name] for name in risk_verdict.order]
        found, weak = weigh(ordered, risk_verdict.order)
        conflicted = bool(risk_verdict.conflicts or found)
        explanation = _explain(risk_verdict, found, weak)
        return risk_verdict.model_copy(
            update={
                "label": "ineffective" if conflicted else "effective",
                "factor_chains": tuple(found),
                "weak_chains": tuple(weak),
                "explanation": explanation + clash_text(risk_verdict.clashes),
            }
        )


def _explain(
    risk_verdict: Verdict, found: Sequence[FactorChain], weak: Sequence[FactorChain]
) -> str:
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
        " Not counted, as data and model factors alone do not decide: "
        + "; ".join(chain.sentence() for chain in weak)
        + "."
        if weak
        else ""
    )
    if not parts:
        return (
            "The factors technique finds no conflict: no defense uses a risk a later one "
            "mitigates, and no defense moves a factor of the objective, or a mechanical fact, "
            "against what another's effectiveness needs. Apply them in this order: "
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
