"""Planning a combination: what can be decided from declarations and plain facts about the data.

Every name is in the catalog, the checker's verdict and the order to apply, whether each defense
applies to the data (its kind, whether it has a sensitive attribute), the tolerance overrides,
and the threat scenario every arm runs under. None of it needs a model, so this module imports
no torch (tests/test_planning.py checks it, in a fresh interpreter): refusals come before any
training, and the planning rules can be read and tested apart from the machinery that trains.
What does need a model (a defense refusing the user's architecture) is asked through a callback
the composer supplies, at the point of the checks where it always was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from defcon.catalog import Catalog
from defcon.checker import check
from defcon.errors import DefconError
from defcon.vocabulary import DataKind, DefenseSpec, Threat

if TYPE_CHECKING:  # pragma: no cover
    from defcon.engine.data import Dataset


class HasDataFacts(Protocol):
    """What planning reads off a loaded dataset (`defcon.engine.data.Dataset` has these)."""

    name: str
    kind: DataKind
    sensitive_attribute: str | None


@dataclass(frozen=True)
class DataFacts:
    """The facts about a dataset that decide whether a defense applies: plain values, no tensors."""

    name: str
    kind: DataKind
    sensitive_attribute: str | None = None

    @classmethod
    def of(cls, dataset: HasDataFacts) -> DataFacts:
        return cls(dataset.name, dataset.kind, dataset.sensitive_attribute)


def applicability_problem(spec: DefenseSpec, data: DataFacts | Dataset) -> str | None:
    """Why `spec` cannot run on the data (None when it can); takes the facts or a loaded Dataset."""
    facts = data if isinstance(data, DataFacts) else DataFacts.of(data)
    if facts.kind not in spec.data_kinds:
        kinds = ", ".join(sorted(spec.data_kinds))
        return f"'{spec.name}' applies to {kinds} data only, and {facts.name} is {facts.kind} data"
    if spec.needs_sensitive_attribute and facts.sensitive_attribute is None:
        return f"'{spec.name}' needs a sensitive attribute, and {facts.name} has none"
    for declared in spec.not_applicable:  # hard requirements first, then declared limits
        if declared.kind == facts.kind:
            return (
                f"'{spec.name}' is not applicable to {facts.kind} data ({facts.name}): "
                f"{declared.reason}"
            )
    return None


@dataclass(frozen=True)
class Scenario:
    """The adversaries every arm of a comparison faces: the union of its defenses' threats.

    One scenario for no defense, each defense alone and the combination, so that alone →
    combined isolates the interaction rather than a change of attacker.
    """

    threats: frozenset[Threat]

    @classmethod
    def of(cls, specs: Iterable[DefenseSpec]) -> Scenario:
        return cls(frozenset(threat for spec in specs for threat in spec.threats))

    @property
    def poisoned(self) -> bool:
        """Whether a BadNets poisoner trains with every arm (the only threat that changes models)."""
        return Threat.POISONER in self.threats

    def names(self) -> tuple[str, ...]:
        """The threats as recorded: sorted names."""
        return tuple(sorted(threat.value for threat in self.threats))


def plan_audit(
    names: Sequence[str],
    catalog: Catalog,
    data: DataFacts,
    *,
    require: Callable[[str], object] | None = None,
) -> tuple[list[str], str | None]:
    """An audit's order and Def\\Con label (None under two defenses); raises DefconError.

    Zero or one defense is allowed (the undefended model, a defense alone). `require(name)` is
    called after each defense's applicability check (the composer builds the defense there, so
    a declaration without a mechanism fails before any training).
    """
    specs = catalog.resolve(names, minimum=0)
    for spec in specs:
        problem = applicability_problem(spec, data)
        if problem:
            raise DefconError(f"cannot audit on {data.name}: {problem}")
        if require is not None:
            require(spec.name)
    if len(specs) < 2:
        return [s.name for s in specs], None
    verdict = check(specs, technique="defcon", catalog=catalog)
    if not verdict.composable:
        raise DefconError(f"cannot audit: {verdict.clashes[0].sentence()}")
    return list(verdict.order), verdict.label


def validate_tolerances(
    tolerances: Mapping[str, float] | None, specs: Sequence[DefenseSpec]
) -> dict[str, float]:
    """Tolerance overrides: known metrics, finite numbers ≥ 0 (checked before any training)."""
    tolerances = dict(tolerances or {})
    metric_names = {m.name for spec in specs for m in spec.metrics}
    for metric, value in tolerances.items():
        if metric not in metric_names:
            raise DefconError(
                f"tolerance given for metric '{metric}', which no defense of this combination "
                f"reports; accepted: {', '.join(sorted(metric_names))}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DefconError(
                f"tolerance for '{metric}' must be a number, got {type(value).__name__} {value!r}"
            )
        if not math.isfinite(value) or value < 0:
            raise DefconError(f"tolerance for '{metric}' must be a finite number ≥ 0, got {value}")
    return {metric: float(value) for metric, value in tolerances.items()}
