"""`check`: the one-call Python entry point to the checker."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from defcon.catalog import Catalog, builtin_catalog, load_catalog
from defcon.checker.base import get_technique
from defcon.checker.verdict import Verdict
from defcon.vocabulary import DefenseSpec


def check(
    names_or_specs: Iterable[str | DefenseSpec],
    technique: str = "defcon",
    catalog: Mapping[str, DefenseSpec] | Path | str | None = None,
) -> Verdict:
    """Predict whether a combination of two or more defenses stays effective.

    Names are looked up in `catalog`: a mapping of specs, or the path of a user catalog file
    (TOML/YAML/JSON) added to the built-in defenses; by default the built-in catalog. Specs
    are used as given (they win over a catalog entry of the same name), so a declared defense
    needs no catalog at all. Raises `DefconError` (one line) on bad input.

    >>> check(["model_watermark", "backdoor_pruning"]).label
    'ineffective'
    """
    items = list(names_or_specs)
    if isinstance(catalog, (str, Path)):
        catalog = load_catalog(catalog)
    lookup: Mapping[str, DefenseSpec] = builtin_catalog() if catalog is None else catalog
    given = {item.name: item for item in items if isinstance(item, DefenseSpec)}
    merged = Catalog([*(s for n, s in lookup.items() if n not in given), *given.values()])
    names = [item if isinstance(item, str) else item.name for item in items]
    specs = merged.resolve(names)  # at least two, none repeated, every name known
    return get_technique(technique).check(specs)
