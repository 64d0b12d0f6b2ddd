"""Find the mechanism behind a catalog name: the spec's `implementation` ('module:Class').

Works the same for a built-in defense and a user's own class named in a catalog file: the class
is imported by name, checked against its spec (stage contract, slots vs hooks) and bound to it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any

from defcon.catalog import Catalog, builtin_catalog
from defcon.defense import Defense, contract_problems
from defcon.errors import DefconError
from defcon.vocabulary import DefenseSpec


def load_object(path: str, what: str) -> Any:
    """Import `module:attribute` (dots allowed in both); the working directory is importable,
    so a user's module in their own folder is found as it is by `python -m`."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise DefconError(f"{what} '{path}' is not of the form 'module:name'")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as error:
        raise DefconError(f"{what} '{path}' cannot be loaded ({type(error).__name__}: {error})") from None
    return value


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
    try:
        return cls(dict(config) if config is not None else None, spec=spec)
    except DefconError:
        raise
    except ValueError as error:  # pydantic's ValidationError: bad settings for this defense
        first = str(error).splitlines()
        raise DefconError(f"defense '{spec.name}': invalid settings ({' '.join(first[:3])})") from None
