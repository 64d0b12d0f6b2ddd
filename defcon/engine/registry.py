"""Find the mechanism behind a catalog name: the spec's `implementation` ('module:Class').

Works the same for a built-in defense and a user's own class named in a catalog file: the class
is imported by name, checked against its spec (stage contract, slots vs hooks) and bound to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from defcon.catalog import Catalog, builtin_catalog
from defcon.engine import optional
from defcon.engine.defense import Defense, contract_problems
from defcon.errors import DefconError
from defcon.plugins import load_object
from defcon.user_code import boundary, call
from defcon.vocabulary import DefenseSpec


def defense_class(name: str | DefenseSpec, catalog: Catalog | None = None) -> type[Defense]:
    """The Defense subclass implementing `name`, checked against its spec."""
    spec = name if isinstance(name, DefenseSpec) else (catalog or builtin_catalog())[name]
    if spec.implementation is None:
        raise DefconError(
            f"defense '{spec.name}' is declared but has no mechanism (no 'implementation' in its "
            "spec); it can be checked but not composed"
        )
    cls = load_object(spec.implementation, f"defense '{spec.name}': implementation")
    problems = contract_problems(cls, spec)
    if problems:
        raise DefconError(f"defense '{spec.name}': {problems[0]}")
    return cls


def make_defense(
    name: str | DefenseSpec,
    config: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
) -> Defense:
    """An instance of the defense `name` (from `catalog`, default the installed one), bound to
    its spec, with the given settings (defaults when None)."""
    spec = name if isinstance(name, DefenseSpec) else (catalog or builtin_catalog())[name]
    cls = defense_class(spec)
    for package in cls.requires:
        optional.require(package, f"defense '{spec.name}'")
    with boundary(f"defense '{spec.name}'", f"{cls.__name__}.Config"):
        try:
            cls.Config.model_validate(dict(config) if config is not None else {})
        except ValueError as error:  # pydantic's ValidationError: bad settings for this defense
            first = str(error).splitlines()
            raise DefconError(
                f"defense '{spec.name}': invalid settings ({' '.join(first[:3])})"
            ) from None
    return call(
        f"defense '{spec.name}'", f"{cls.__name__}(...)", cls,
        dict(config) if config is not None else None, spec=spec, returns=Defense,
    )  # fmt: skip


def require_for_defenses(names: Iterable[str], catalog: Catalog) -> None:
    """Every package the named defenses need (their `requires`), checked before a run of many
    combinations, so a missing one stops it at once instead of failing each combination."""
    for name in sorted(set(names)):
        spec = catalog[name]
        if spec.implementation is not None:
            for package in defense_class(spec).requires:
                optional.require(package, f"defense '{name}'")
