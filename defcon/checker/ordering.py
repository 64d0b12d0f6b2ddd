"""Ordering the defenses of one stage so that none undoes another (Def\\Con, DESIGN §1 step 3).

Placing A before B conflicts iff A uses a risk that B mitigates. Read the other way round,
"B mitigates a risk A uses" is the constraint *B before A*, so a conflict-free ordering is a
topological order of those constraints and exists iff they have no cycle.

Two searches return the same answer, the lexicographically smallest conflict-free ordering by
name (so the result never depends on the order the user listed the defenses in), or None:
`topological_order` (Kahn's algorithm with a min-heap; the default) and `enumerated_order`
(the paper's enumeration of orderings, kept as the executable reference).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from defcon.checker.verdict import Precedence
from defcon.vocabulary import DefenseSpec


def precedences(specs: Sequence[DefenseSpec]) -> tuple[Precedence, ...]:
    """Every same-stage constraint: `before` mitigates a risk that `after` uses."""
    found = [
        Precedence(stage=user.stage, before=mitigator.name, after=user.name, risk=risk)
        for user in specs
        for mitigator in specs
        if mitigator.name != user.name
        for risk in user.uses_risks & mitigator.mitigates
    ]
    return tuple(sorted(found, key=lambda p: (p.before, p.after, p.risk.value)))


def _successors(specs: Sequence[DefenseSpec]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {spec.name: set() for spec in specs}
    for constraint in precedences(specs):
        graph[constraint.before].add(constraint.after)
    return graph


def topological_order(specs: Sequence[DefenseSpec]) -> tuple[str, ...] | None:
    """Kahn's algorithm, always taking the smallest available name: O(n log n + constraints)."""
    graph = _successors(specs)
    indegree = {name: 0 for name in graph}
    for targets in graph.values():
        for target in targets:
            indegree[target] += 1
    ready = [name for name, degree in indegree.items() if degree == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for target in graph[name]:
            indegree[target] -= 1
            if indegree[target] == 0:
                heapq.heappush(ready, target)
    return tuple(order) if len(order) == len(graph) else None


def _conflicts(first: DefenseSpec, then: DefenseSpec) -> bool:
    """The paper's pairwise rule: `first` applied before `then` conflicts."""
    return bool(first.uses_risks & then.mitigates)


def enumerated_order(specs: Sequence[DefenseSpec]) -> tuple[str, ...] | None:
    """The paper's search, as a reference: try orderings in lexicographic order, checking every
    ordered pair (not only neighbours); once a pair is known to conflict, reject every later
    ordering that puts it in that order without re-checking. Factorial in the stage size.
    """
    ordered = sorted(specs, key=lambda spec: spec.name)
    known_bad: set[tuple[str, str]] = set()
    for ordering in itertools.permutations(ordered):  # lexicographic, as the input is sorted
        pairs = list(itertools.combinations(ordering, 2))
        if any((a.name, b.name) in known_bad for a, b in pairs):
            continue
        bad = {(a.name, b.name) for a, b in pairs if _conflicts(a, b)}
        if not bad:
            return tuple(spec.name for spec in ordering)
        known_bad |= bad
    return None


def strongly_connected(specs: Sequence[DefenseSpec]) -> list[frozenset[str]]:
    """Groups of defenses that constrain each other in a cycle (singletons when acyclic)."""
    graph = _successors(specs)

    def reachable(start: str) -> set[str]:
        seen, stack = {start}, [start]
        while stack:
            for target in graph[stack.pop()]:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return seen

    reach = {name: reachable(name) for name in graph}
    components: list[frozenset[str]] = []
    for name in sorted(graph):
        if not any(name in component for component in components):
            components.append(frozenset(n for n in reach[name] if name in reach[n]))
    return components


def condensed_order(specs: Sequence[DefenseSpec]) -> tuple[str, ...]:
    """A deterministic order even when the constraints have a cycle: the cycles' components in
    topological order (smallest name first among the available ones), each sorted by name. It
    violates only constraints inside a component, which no ordering can satisfy anyway.
    """
    graph = _successors(specs)
    components = strongly_connected(specs)
    component_of = {name: index for index, group in enumerate(components) for name in group}
    edges = {
        (component_of[source], component_of[target])
        for source, targets in graph.items()
        for target in targets
        if component_of[source] != component_of[target]
    }
    indegree = [0] * len(components)
    for _, target in edges:
        indegree[target] += 1
    ready = [(min(group), index) for index, group in enumerate(components) if indegree[index] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, index = heapq.heappop(ready)
        order.extend(sorted(components[index]))
        for source, target in edges:
            if source == index:
                indegree[target] -= 1
                if indegree[target] == 0:
                    heapq.heappush(ready, (min(components[target]), target))
    return tuple(order)
