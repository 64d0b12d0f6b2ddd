"""Def\\Con (Duddu, Zhang & Asokan, TMLR 2025): predict conflicts from declared risks alone.

An earlier defense that *uses* a risk conflicts with a later one that *mitigates* it: the later
defense removes what the earlier one relies on (DESIGN §1). Within a stage the checker picks
the order; across stages the pipeline fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from defcon.checker.base import by_stage, clash_text, structural_clashes, validated
from defcon.checker.ordering import (
    condensed_order,
    enumerated_order,
    precedences,
    strongly_connected,
    topological_order,
)
from defcon.checker.verdict import Conflict, Precedence, Verdict
from defcon.vocabulary import DefenseSpec, Stage

Search = Literal["topological", "enumerate"]

_SEARCHES = {"topological": topological_order, "enumerate": enumerated_order}


def conflict(earlier: DefenseSpec, later: DefenseSpec) -> list[Conflict]:
    """The two-defense rule: one conflict per risk `earlier` uses and `later` mitigates."""
    return [
        Conflict(
            earlier=earlier.name,
            earlier_stage=earlier.stage,
            risk=risk,
            later=later.name,
            later_stage=later.stage,
            reason=earlier.reason_for(risk),
        )
        for risk in sorted(earlier.uses_risks & later.mitigates, key=lambda r: r.value)
    ]


@dataclass(frozen=True)
class StageUnit:
    """One stage's composite unit: its order and the conflicts no ordering of it avoids."""

    stage: Stage
    order: tuple[str, ...]
    precedences: tuple[Precedence, ...]
    conflicts: tuple[Conflict, ...]  # non-empty iff the stage has no conflict-free ordering


def compose_stage(
    stage: Stage, specs: Sequence[DefenseSpec], search: Search = "topological"
) -> StageUnit:
    """Order one stage's defenses, or, if no ordering is conflict-free, name the conflicting
    pairs: every (A uses r, B mitigates r) with A and B in the same cycle of constraints. That
    set only grows when defenses are added, so a conflict never disappears from a superset.
    """
    order = _SEARCHES[search](specs)
    constraints = precedences(specs)
    if order is not None:
        return StageUnit(stage, order, constraints, ())
    component_of = {
        name: index for index, group in enumerate(strongly_connected(specs)) for name in group
    }
    found = [
        found_conflict
        for user in specs
        for mitigator in specs
        if user.name != mitigator.name and component_of[user.name] == component_of[mitigator.name]
        for found_conflict in conflict(user, mitigator)
    ]
    return StageUnit(stage, condensed_order(specs), constraints, tuple(found))


def _sort_key(item: Conflict) -> tuple:
    return (
        item.earlier_stage.position,
        item.later_stage.position,
        item.earlier,
        item.later,
        item.risk.value,
    )


class DefConTechnique:
    """Def\\Con with a choice of search for the within-stage ordering (results are identical).

    Confidence: always 1.0, and it never abstains. The rule weighs no evidence (a declared risk
    is used and later mitigated, or not), so the number says only that the rule applied.
    """

    summary = "Def\\Con: an earlier defense that uses a risk a later defense mitigates conflicts"

    def __init__(self, search: Search = "topological", name: str = "defcon") -> None:
        if search not in _SEARCHES:
            raise ValueError(f"search must be one of {sorted(_SEARCHES)}, not {search!r}")
        self.search: Search = search
        self.name = name

    def check(self, specs: Sequence[DefenseSpec]) -> Verdict:
        specs = validated(specs)
        staged = by_stage(specs)
        units = [compose_stage(stage, members, self.search) for stage, members in staged.items()]
        conflicts = [c for unit in units for c in unit.conflicts]
        # Stage by stage: any constituent of an earlier unit against any of a later unit.
        stages = list(staged)
        for i, earlier_stage in enumerate(stages):
            for later_stage in stages[i + 1 :]:
                for earlier in staged[earlier_stage]:
                    for later in staged[later_stage]:
                        conflicts.extend(conflict(earlier, later))
        conflicts.sort(key=_sort_key)
        clashes = structural_clashes(specs)
        verdict_conflicts = tuple(conflicts)
        return Verdict(
            technique=self.name,
            label="ineffective" if conflicts else "effective",
            defenses=tuple(spec.name for spec in specs),
            order=tuple(name for unit in units for name in unit.order),
            stages={unit.stage.value: unit.order for unit in units},
            conflicts=verdict_conflicts,
            precedences=tuple(p for unit in units for p in unit.precedences),
            clashes=clashes,
            explanation=_explain(units, verdict_conflicts) + clash_text(clashes),
        )


def _explain(units: Sequence[StageUnit], conflicts: Sequence[Conflict]) -> str:
    if not conflicts:
        order = " → ".join(name for unit in units for name in unit.order)
        text = (
            "Def\\Con finds no conflict: no defense uses a risk that a defense applied after it "
            f"mitigates. Apply them in this order: {order}."
        )
        reasons = [
            f"{p.before} mitigates {p.risk}, which {p.after} uses, so {p.before} comes first"
            for unit in units
            for p in unit.precedences
        ]
        if reasons:
            text += f" Within a stage the order matters: {'; '.join(reasons)}."
        return text
    shown = [f"{c.later} mitigates {c.risk}, which {c.earlier} relies on" for c in conflicts[:3]]
    more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
    losers = sorted({c.earlier for c in conflicts})
    text = (
        f"Def\\Con predicts a conflict: {'; '.join(shown)}{more}. Applied later, the mitigating "
        f"defense removes what the other relies on, so {_listing(losers)} "
        f"{'is' if len(losers) == 1 else 'are'} expected to lose effectiveness."
    )
    for unit in units:
        if unit.conflicts:
            names = sorted({c.earlier for c in unit.conflicts} | {c.later for c in unit.conflicts})
            text += (
                f" No ordering of the {unit.stage.value}-training stage avoids this: "
                f"{_listing(names)} constrain each other in a cycle."
            )
    return text


def _listing(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
