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
(O1, O2.x, O3) decide, and a tie leaves the guideline silent (no conflict). A harmful mechanical
fact is a conflict on its own: it is a fact about the pipeline, not a correlation.

No rule here names a defense: everything comes from the declarations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from defcon.checker.base import clash_text
from defcon.checker.defcon_technique import DefConTechnique
from defcon.checker.verdict import FactorChain, Verdict
from defcon.vocabulary import DefenseSpec, Factor, FactorClaim, Stage, sok_guideline


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


def chains(specs: Sequence[DefenseSpec], order: Sequence[str]) -> list[FactorChain]:
    """Every (mover, dependent) pair whose shared factors predict a loss of effectiveness."""
    found: list[FactorChain] = []
    for dependent in specs:
        for mover in specs:
            if mover.name == dependent.name:
                continue
            links = [
                _Link(moved, needed)
                for needed in dependent.depends_on
                for moved in mover.moves
                if moved.factor is needed.factor and reaches(mover, dependent, needed.factor, order)
            ]
            harmful = [link for link in links if link.harmful]
            if harmful and _conflicts(links):
                found.extend(
                    FactorChain(
                        mover=mover.name,
                        factor=link.moved.factor,
                        moved=link.moved.direction,
                        dependent=dependent.name,
                        needed=link.needed.direction,
                        mover_reference=link.moved.reference,
                        dependent_reference=link.needed.reference,
                    )
                    for link in harmful
                )
    return found


def _conflicts(links: Sequence[_Link]) -> bool:
    """The SoK guideline over the shared factors of one (mover, dependent) pair."""
    if any(link.harmful and link.moved.factor.mechanical for link in links):
        return True
    learned = [
        (link.moved.factor, link.harmful) for link in links if not link.moved.factor.mechanical
    ]
    return sok_guideline(learned) is True


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
        found = chains(ordered, risk_verdict.order)
        conflicted = bool(risk_verdict.conflicts or found)
        explanation = _explain(risk_verdict, found)
        return risk_verdict.model_copy(
            update={
                "label": "ineffective" if conflicted else "effective",
                "factor_chains": tuple(found),
                "explanation": explanation + clash_text(risk_verdict.clashes),
            }
        )


def _explain(risk_verdict: Verdict, found: Sequence[FactorChain]) -> str:
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
    if not parts:
        return (
            "The factors technique finds no conflict: no defense uses a risk a later one "
            "mitigates, and no defense moves a factor against what another's effectiveness "
            f"needs. Apply them in this order: {' → '.join(risk_verdict.order)}."
        )
    losers = sorted({c.earlier for c in risk_verdict.conflicts} | {c.dependent for c in found})
    return (
        "The factors technique predicts a conflict. "
        + " ".join(parts)
        + f" Expected to lose effectiveness: {', '.join(losers)}."
        + f" Order: {' → '.join(risk_verdict.order)}."
    )
