"""Find the mechanism behind a catalog name: the spec's `implementation` ('module:Class')."""

from __future__ import annotations

import importlib
from typing import Any

from defcon.catalog import Catalog, builtin_catalog
from defcon.defense import Defense
from defcon.errors import DefconError


def defense_class(name: str, catalog: Catalog | None = None) -> type[Defense]:
    """The Defense subclass implementing `name`; a clear error for declaration-only specs."""
    spec = (catalog or builtin_catalog())[name]
    if spec.implementation is None:
        raise DefconError(
            f"defense '{name}' is declared but has no mechanism (no 'implementation' in its "
            "spec); it can be checked but not composed"
        )
    module_name, _, class_name = spec.implementation.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise DefconError(
            f"defense '{name}': cannot load its implementation '{spec.implementation}' ({error})"
        ) from None
    return cls


def make_defense(name: str, config: dict[str, Any] | None = None) -> Defense:
    """An instance of the defense `name` with the given settings (defaults when None)."""
    return defense_class(name)(config)
