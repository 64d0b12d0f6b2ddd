"""Validating a requested combination before any training, with advice when it conflicts.

Above both the data facts (`defcon.planning.rules`) and the search for alternatives
(`defcon.planning.planner`): a refusal of a predicted conflict names the conflict-free combinations the
planner finds for the same risks. Torch-free, like both (tests/test_planning.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from defcon.catalog import Catalog
from defcon.checker import Verdict, check
from defcon.errors import DefconError
from defcon.planning.planner import advice, alternatives
from defcon.planning.rules import DataFacts, Scenario, applicability_problem
from defcon.vocabulary import DefenseSpec


@dataclass(frozen=True)
class Plan:
    """A validated combination: its specs as named, the checker's verdict and the scenario."""

    specs: tuple[DefenseSpec, ...]
    verdict: Verdict
    scenario: Scenario
    alternatives: tuple[
        tuple[str, ...], ...
    ] = ()  # after a predicted conflict (defcon.planning.planner)

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(self.verdict.order)

    @property
    def ordered_specs(self) -> tuple[DefenseSpec, ...]:
        """The specs in the order the defenses are applied."""
        return tuple(sorted(self.specs, key=lambda s: self.order.index(s.name)))


def plan_combination(
    names: Sequence[str],
    catalog: Catalog,
    data: DataFacts,
    *,
    force: bool = False,
    model_problem: Callable[[str], str | None] | None = None,
) -> Plan:
    """Validate a combination before any training (raises DefconError with the first problem).

    In order: names known and distinct, no structural clash, every defense applicable to the
    data, `model_problem(name)` (the caller's check against its model) for each, and no
    predicted conflict unless `force`.
    """
    specs = catalog.resolve(names)
    verdict = check(specs, technique="defcon", catalog=catalog)
    if not verdict.composable:
        raise DefconError(f"cannot compose: {verdict.clashes[0].sentence()}")
    for spec in specs:
        problem = applicability_problem(spec, data)
        if problem:
            raise DefconError(f"cannot compose on {data.name}: {problem}")
    for name in names:
        problem = model_problem(name) if model_problem is not None else None
        if problem:
            raise DefconError(f"cannot compose with this model: {problem}")
    found: list[tuple[str, ...]] = []
    if not verdict.effective:
        found = alternatives(specs, catalog, data=data)
        if not force:
            raise DefconError(
                f"refused: Def\\Con predicts a conflict. {verdict.explanation} "
                f"{advice(specs, catalog, found)}. Pass --force to measure it anyway."
            )
    return Plan(tuple(specs), verdict, Scenario.of(specs), tuple(found))
