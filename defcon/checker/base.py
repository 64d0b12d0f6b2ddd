"""The technique protocol, its registry, and the helpers every technique shares.

A new technique is a class with a `name`, a one-line `summary` and a `check` method, made
available everywhere (CLI `--technique`, benchmark) by one `register(...)` call; an installed
package's, by an entry point in the group `defcon.techniques` naming the object (`techniques()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from defcon.checker.verdict import StructuralClash, Verdict
from defcon.errors import DefconError, unknown
from defcon.plugins import register_plugins
from defcon.user_code import call
from defcon.vocabulary import DefenseSpec, Slot, Stage


@runtime_checkable
class Technique(Protocol):
    """Predicts whether a combination of declared defenses stays effective."""

    name: str
    summary: str

    def check(self, specs: Sequence[DefenseSpec]) -> Verdict: ...


TECHNIQUE_GROUP = "defcon.techniques"
TECHNIQUES: dict[str, Technique] = {}  # defcon's own, and plug-ins once `techniques()` ran


def register(technique: Technique) -> Technique:
    """Make `technique` available by name; a name can be registered once."""
    if technique.name in TECHNIQUES:
        raise ValueError(f"technique '{technique.name}' is already registered")
    TECHNIQUES[technique.name] = technique
    return technique


class PluggedTechnique:
    """An installed package's technique, called behind the user-code boundary: whatever its
    `check` raises, or a result that is no Verdict, is one error line naming it."""

    def __init__(self, inner: Technique) -> None:
        self.inner = inner
        self.name = inner.name
        self.summary = inner.summary

    def check(self, specs: Sequence[DefenseSpec]) -> Verdict:
        return call(f"technique '{self.name}'", "check", self.inner.check, specs, returns=Verdict)


def technique_problem(technique: object) -> str | None:
    """Why `technique` cannot be registered (None when it can)."""
    if not isinstance(technique, Technique) or not callable(technique.check):
        return f"{type(technique).__name__} {technique!r:.60} has no name, summary and check"
    name = technique.name
    if (
        not isinstance(name, str)
        or not name.isidentifier()
        or not isinstance(technique.summary, str)
    ):
        return f"its name {name!r:.40} must be a word and its summary a string"
    if name in TECHNIQUES or name == "pilot":  # pilot: the CLI's training technique
        return f"technique '{name}' is already registered"
    return None


def techniques() -> dict[str, Technique]:
    """Every technique by name: defcon's own, then those of installed packages (entry-point
    group `defcon.techniques`, each naming a Technique object), loaded once."""
    register_plugins(
        TECHNIQUE_GROUP,
        lambda value: any(value is getattr(t, "inner", t) for t in TECHNIQUES.values()),
        technique_problem,
        lambda value: register(PluggedTechnique(value)),
    )
    return dict(TECHNIQUES)


def get_technique(name: str) -> Technique:
    known = techniques()
    try:
        return known[name]
    except KeyError:
        raise unknown("technique", name, known) from None


def validated(specs: Sequence[DefenseSpec]) -> list[DefenseSpec]:
    """The specs sorted by name, after checking there is at least one and no name repeats."""
    if not specs:
        raise DefconError("a combination needs at least one defense, got none")
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise DefconError(f"defense '{name}' is named twice; name each defense once")
    return sorted(specs, key=lambda spec: spec.name)


def by_stage(specs: Sequence[DefenseSpec]) -> dict[Stage, list[DefenseSpec]]:
    """Non-empty stages in pipeline order, each with its specs in the given order."""
    grouped: dict[Stage, list[DefenseSpec]] = {}
    for stage in sorted(Stage, key=lambda s: s.position):
        members = [spec for spec in specs if spec.stage is stage]
        if members:
            grouped[stage] = members
    return grouped


def structural_clashes(specs: Sequence[DefenseSpec]) -> tuple[StructuralClash, ...]:
    """In-training defenses that cannot share one loop: an exclusive slot wanted by more than
    one, or a slot another fills that a defense declares it cannot run beside."""
    in_training = [spec for spec in specs if spec.stage is Stage.IN]
    fillers: dict[Slot, list[str]] = {}
    for spec in in_training:
        for slot in spec.slots:
            if slot.exclusive:
                fillers.setdefault(slot, []).append(spec.name)
    shared = [
        StructuralClash(slot=slot, defenses=tuple(sorted(names)))
        for slot, names in sorted(fillers.items(), key=lambda item: item[0].value)
        if len(names) > 1
    ]
    declared = [
        StructuralClash(
            slot=exclusion.slot, defenses=(spec.name, other.name), reason=exclusion.reason
        )
        for spec in sorted(in_training, key=lambda s: s.name)
        for exclusion in spec.excludes
        for other in sorted(in_training, key=lambda s: s.name)
        if other.name != spec.name and exclusion.slot in other.slots
    ]
    return (*shared, *declared)


def clash_text(clashes: Sequence[StructuralClash]) -> str:
    """The explanation's closing sentence about structural clashes (empty when there are none)."""
    if not clashes:
        return ""
    return " Separately, " + "; ".join(clash.sentence() for clash in clashes) + "."
