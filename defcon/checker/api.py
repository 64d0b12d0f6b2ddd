"""`check`: the one-call Python entry point to the checker."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path

from defcon.catalog import Catalog, builtin_catalog, load_catalog
from defcon.checker.base import get_technique
from defcon.checker.verdict import Label, Verdict
from defcon.errors import DefconError
from defcon.vocabulary import DataKind, DefenseSpec


def check(
    names_or_specs: Iterable[str | DefenseSpec],
    technique: str = "defcon",
    catalog: Mapping[str, DefenseSpec] | Path | str | None = None,
    data_kind: str | None = None,
) -> Verdict:
    """Predict whether a combination of two or more defenses stays effective.

    `names_or_specs` is a list (or other iterable) of defense names and `DefenseSpec` objects; a
    single name given as a bare string counts as one defense (so it is refused as too few).

    Names are looked up in `catalog`: a mapping of specs, or the path of a user catalog file
    (TOML/YAML/JSON) added to the built-in defenses; by default the built-in catalog. Specs
    are used as given (they win over a catalog entry of the same name), so a declared defense
    needs no catalog at all. `data_kind` (image or tabular) is the kind of data the combination
    runs on: a technique that reads it (factors) leaves out claims scoped to other kinds, and
    without it may report `uncertain` (`Verdict.reported`). Raises `DefconError` (one line) on
    bad input.

    >>> check(["model_watermark", "backdoor_pruning"]).label
    'ineffective'
    """
    items = _items(names_or_specs)
    if not isinstance(technique, str):
        raise DefconError(
            f"check(technique=...) takes a technique name (str), got {type(technique).__name__}"
        )
    if isinstance(catalog, (str, Path)):
        catalog = load_catalog(catalog)
    elif catalog is not None:
        _check_catalog(catalog)
    lookup: Mapping[str, DefenseSpec] = builtin_catalog() if catalog is None else catalog
    given = {item.name: item for item in items if isinstance(item, DefenseSpec)}
    merged = Catalog([*(s for n, s in lookup.items() if n not in given), *given.values()])
    names = [item if isinstance(item, str) else item.name for item in items]
    specs = merged.resolve(names)  # at least two, none repeated, every name known
    return run_technique(get_technique(technique), specs, check_kind(data_kind))


def run_technique(chosen: object, specs: list[DefenseSpec], kind: DataKind | None) -> Verdict:
    """`chosen.check(specs)`, with the data kind for a technique whose `check` takes one (a
    technique that does not read it predicts the same on every kind)."""
    if kind is not None and "data_kind" in inspect.signature(chosen.check).parameters:  # type: ignore[attr-defined]
        return chosen.check(specs, data_kind=kind)  # type: ignore[attr-defined]
    return chosen.check(specs)  # type: ignore[attr-defined]


def check_kind(data_kind: object, where: str = "check(data_kind=...)") -> DataKind | None:
    """The data kind checked at the boundary: one DefconError naming the accepted kinds."""
    if data_kind is None:
        return None
    accepted = ", ".join(kind.value for kind in DataKind)
    if not isinstance(data_kind, str) or data_kind not in {kind.value for kind in DataKind}:
        raise DefconError(f"{where} takes one of {accepted}, got {data_kind!r}")
    return DataKind(data_kind)


_ACCEPTED = "a list of defense names (str, as `defcon list` shows them) or DefenseSpec objects"


def _items(names_or_specs: object) -> list[str | DefenseSpec]:
    """The combination as a list, checked at the boundary: one DefconError for anything else."""
    if isinstance(names_or_specs, (str, DefenseSpec)):
        return [names_or_specs]  # one name (or spec), not an iterable of its characters
    if isinstance(names_or_specs, (bytes, Mapping)) or not isinstance(names_or_specs, Iterable):
        raise DefconError(f"check() takes {_ACCEPTED}; got {type(names_or_specs).__name__}")
    items = list(names_or_specs)
    for item in items:
        if not isinstance(item, (str, DefenseSpec)):
            raise DefconError(
                f"check() takes {_ACCEPTED}; got {item!r} ({type(item).__name__}) in the list"
            )
    return items


def _check_catalog(catalog: object) -> None:
    accepted = "a mapping of name → DefenseSpec, or the path of a catalog file (str or Path)"
    if not isinstance(catalog, Mapping):
        raise DefconError(f"check(catalog=...) takes {accepted}; got {type(catalog).__name__}")
    for name, spec in catalog.items():
        if not isinstance(spec, DefenseSpec):
            raise DefconError(
                f"check(catalog=...) takes {accepted}; entry {name!r} is a "
                f"{type(spec).__name__}, not a DefenseSpec"
            )


def predictions(
    specs: list[DefenseSpec],
    catalog: Mapping[str, DefenseSpec] | None = None,
    data_kind: str | None = None,
) -> tuple[dict[str, Label], tuple[str, ...]]:
    """Every registered technique's label for `specs`, and the techniques that abstain
    (`uncertain`: their label is only their lean), as a record stores them."""
    from defcon.checker.base import techniques

    verdicts = {
        name: check(specs, technique=name, catalog=catalog, data_kind=data_kind)
        for name in techniques()
    }
    return (
        {name: verdict.label for name, verdict in verdicts.items()},
        tuple(sorted(name for name, verdict in verdicts.items() if verdict.uncertain)),
    )
