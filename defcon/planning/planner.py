"""`plan`: from the risks a model must resist to ranked defense combinations (torch-free).

Searches the catalog for the smallest combinations covering every named risk, asks a technique
whether each one conflicts or cannot share a training loop, and keeps the reasons for every
combination it drops, so a practitioner sees why an alternative was not offered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations

from defcon.checker.base import get_technique
from defcon.errors import DefconError
from defcon.planning.evidence import Evidence, EvidenceMap, deciding
from defcon.planning.rules import DataFacts, applicability_problem
from defcon.vocabulary import DefenseSpec, Risk


@dataclass(frozen=True)
class Candidate:
    """One combination covering the risks: its order, or why it was dropped."""

    defenses: tuple[str, ...]
    order: tuple[str, ...]
    excluded: str | None  # None: kept
    weak: int  # weak (data/model-factor) chains: fewer ranks higher
    evidence: Evidence | None = None  # the record deciding its place (defcon.planning.evidence)

    def rank(self) -> tuple:
        """Kept first; then the prediction's confidence (fewer weak chains), then measured
        evidence (effective before unmeasured, smaller cost and time first), then size."""
        held = self.evidence if self.evidence is not None and self.evidence.effective else None
        cost = held.rank() if held is not None else (0.0, 0.0)
        size = len(self.defenses)
        return (self.excluded is not None, self.weak, held is None, size, cost, self.order)


def parse_risks(text: str) -> frozenset[Risk]:
    """`a,b,c` → risks; one DefconError naming the accepted risks otherwise."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    accepted = ", ".join(r.value for r in Risk)
    bad = [n for n in names if n not in {r.value for r in Risk}]
    if not names or bad:
        raise DefconError(f"unknown risk {', '.join(bad) or '(none given)'}; accepted: {accepted}")
    return frozenset(Risk(n) for n in names)


def covering(
    risks: frozenset[Risk], catalog: Mapping[str, DefenseSpec]
) -> Iterable[tuple[DefenseSpec, ...]]:
    """Combinations covering every risk in which every defense covers a risk no other does."""
    useful = sorted((s for s in catalog.values() if s.mitigates & risks), key=lambda s: s.name)
    for size in range(1, len(risks) + 1):
        for combo in combinations(useful, size):
            if not risks <= frozenset().union(*(s.mitigates for s in combo)):
                continue
            rest = (frozenset().union(*(o.mitigates for o in combo if o is not s)) for s in combo)
            if not any(risks <= covered for covered in rest):
                yield combo


def inapplicable(
    risks: frozenset[Risk], catalog: Mapping[str, DefenseSpec], data: DataFacts
) -> dict[str, str]:
    """The defenses for `risks` that cannot run on `data`, each with why."""
    found = {}
    for spec in catalog.values():
        problem = applicability_problem(spec, data) if spec.mitigates & risks else None
        if problem:
            found[spec.name] = problem
    return dict(sorted(found.items()))


def plan(
    risks: frozenset[Risk],
    catalog: Mapping[str, DefenseSpec],
    technique: str = "defcon",
    *,
    data: DataFacts | None = None,
    evidence: EvidenceMap | None = None,
) -> list[Candidate]:
    """Every minimal covering combination, kept ones first (ranked), then the dropped ones.

    With `data`, defenses that cannot run on it are left out before the search (`inapplicable`
    says why); with `evidence`, a combination measured `ineffective` is dropped naming its record.
    """
    checker = get_technique(technique)
    if data is not None:
        unusable = inapplicable(risks, catalog, data)
        catalog = {name: spec for name, spec in catalog.items() if name not in unusable}
    found: list[Candidate] = []
    for combo in covering(risks, catalog):
        names = tuple(s.name for s in combo)
        measured = deciding((evidence or {}).get(frozenset(names), []))
        if len(combo) == 1:
            order, why, weak = names, None, 0
        else:
            verdict = checker.check(list(combo))
            order, weak = verdict.order, len(verdict.weak_chains)
            if verdict.clashes:
                why = "cannot share a training loop: " + "; ".join(
                    f"{' + '.join(c.defenses)}: {c.reason}" for c in verdict.clashes
                )
            elif not verdict.effective:
                why = "conflict predicted: " + verdict.explanation.splitlines()[0]
            else:
                why = None
        if why is None and measured is not None and measured.ineffective:
            why = measured.sentence()
        found.append(Candidate(names, order, why, weak, measured))
    return sorted(found, key=Candidate.rank)


def alternatives(
    specs: Iterable[DefenseSpec],
    catalog: Mapping[str, DefenseSpec],
    technique: str = "defcon",
    *,
    data: DataFacts | None = None,
    limit: int = 3,
) -> list[tuple[str, ...]]:
    """After a conflict: up to `limit` conflict-free combinations covering the same risks, each in
    the order to apply it (the combination itself is never among them)."""
    specs = list(specs)
    risks = frozenset().union(*(s.mitigates for s in specs))
    given = frozenset(s.name for s in specs)
    kept = (c for c in plan(risks, catalog, technique, data=data) if c.excluded is None)
    return [tuple(c.order) for c in kept if frozenset(c.defenses) != given][:limit]


def advice(
    specs: Iterable[DefenseSpec], catalog: Mapping[str, DefenseSpec], found: list[tuple[str, ...]]
) -> str:
    """One sentence naming the alternatives (or that none exists) for the risks of `specs`."""
    risks = ", ".join(sorted(frozenset().union(*(s.mitigates for s in specs))))
    if not found:
        return f"no conflict-free combination in the catalog covers {risks}"
    return f"conflict-free alternatives for {risks}: " + "; ".join(" → ".join(o) for o in found)
