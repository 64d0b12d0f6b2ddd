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
from defcon.vocabulary import DefenseSpec, Risk


@dataclass(frozen=True)
class Candidate:
    """One combination covering the risks: its order, or why it was dropped."""

    defenses: tuple[str, ...]
    order: tuple[str, ...]
    excluded: str | None  # None: kept
    weak: int  # weak (data/model-factor) chains: fewer ranks higher


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


def plan(
    risks: frozenset[Risk], catalog: Mapping[str, DefenseSpec], technique: str = "defcon"
) -> list[Candidate]:
    """Every minimal covering combination, kept ones first (ranked), then the dropped ones."""
    checker = get_technique(technique)
    found: list[Candidate] = []
    for combo in covering(risks, catalog):
        names = tuple(s.name for s in combo)
        if len(combo) == 1:
            found.append(Candidate(names, names, None, 0))
            continue
        verdict = checker.check(list(combo))
        if verdict.clashes:
            why = "cannot share a training loop: " + "; ".join(
                f"{' + '.join(c.defenses)}: {c.reason}" for c in verdict.clashes
            )
        elif not verdict.effective:
            why = "conflict predicted: " + verdict.explanation.splitlines()[0]
        else:
            why = None
        found.append(Candidate(names, verdict.order, why, len(verdict.weak_chains)))
    return sorted(found, key=lambda c: (c.excluded is not None, c.weak, len(c.defenses), c.order))
