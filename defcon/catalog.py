"""The catalog of defense declarations: the built-in ones and those a user declares in a file.

The core does not know which defenses exist. Packages contribute specs through the entry-point
group `defcon.catalogs` (each entry point names a callable returning DefenseSpecs); defcon's own
defenses (`pipeline_stages`) are one such package, declared in pyproject.toml. Their specs are
TOML files read with the same loader as a user's catalog file, so both are held to the same
validation.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from defcon.errors import DefconError, unknown
from defcon.vocabulary import DefenseSpec, Stage

CATALOG_GROUP = "defcon.catalogs"
# Running from a source checkout that was never installed (or whose installed metadata predates
# the entry point), the group is empty: then the bundled plugin is looked up by this name. It is
# data, not an import: a core without `pipeline_stages` still works (with an empty catalog).
_CHECKOUT_FALLBACK = metadata.EntryPoint(
    name="builtin", value="pipeline_stages:catalog", group=CATALOG_GROUP
)


class Catalog(Mapping[str, DefenseSpec]):
    """An immutable name → spec mapping with helpful lookups."""

    def __init__(self, specs: Iterable[DefenseSpec] = ()) -> None:
        self._specs: dict[str, DefenseSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise DefconError(f"defense '{spec.name}' is declared twice in the catalog")
            self._specs[spec.name] = spec

    def __getitem__(self, name: str) -> DefenseSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise unknown("defense", name, self._specs) from None

    def __contains__(self, name: object) -> bool:
        # Mapping's default asks __getitem__ and catches KeyError, which an unknown name never
        # raises here (it is a DefconError): `in` must answer, not abort.
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def merged(self, extra: Iterable[DefenseSpec]) -> Catalog:
        """This catalog plus user specs; a user spec may not silently replace a built-in one."""
        return Catalog([*self._specs.values(), *extra])

    def by_stage(self) -> dict[Stage, list[DefenseSpec]]:
        grouped: dict[Stage, list[DefenseSpec]] = {stage: [] for stage in Stage}
        for spec in self._specs.values():
            grouped[spec.stage].append(spec)
        return grouped

    def resolve(self, names: Iterable[str], *, minimum: int = 2) -> list[DefenseSpec]:
        """Look up a user's combination: every name known, none repeated, at least `minimum`."""
        names = list(names)
        if len(names) < minimum:
            raise DefconError(
                f"a combination needs at least {minimum} defenses, got {len(names)}"
                + (f" ({', '.join(names)})" if names else "")
                + f"; name {minimum} or more of: {', '.join(sorted(self))}"
            )
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise DefconError(f"defense '{name}' is named twice; name each defense once")
            seen.add(name)
        return [self[name] for name in names]


def parse_specs(data: Any, source: str) -> list[DefenseSpec]:
    """Validate a parsed catalog document: `{"defense": [ {spec}, ... ]}`."""
    if not isinstance(data, dict) or not isinstance(data.get("defense"), list):
        raise DefconError(
            f"{source}: a catalog file must hold a list of defenses under the key 'defense' "
            "(TOML: [[defense]] tables)"
        )
    specs = []
    for index, entry in enumerate(data["defense"]):
        label = entry.get("name", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"
        try:
            specs.append(DefenseSpec.model_validate(entry))
        except ValidationError as error:
            raise DefconError(f"{source}: defense '{label}': {_first_problem(error)}") from None
    return specs


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"])
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "enum":
        expected = problem.get("ctx", {}).get("expected", "")
        return f"{where}: {problem['input']!r} is not accepted; expected {expected}"
    return f"{where}: {message}" if where else message


def load_catalog_file(path: Path | str) -> list[DefenseSpec]:
    """Read user-declared specs from a TOML, YAML or JSON file."""
    from defcon.storage import read_text

    path = Path(path)
    text = read_text(path, "catalog file", "a .toml, .yaml or .json file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise DefconError(
                f"catalog file '{path}' has suffix '{suffix}'; accepted: .toml, .yaml, .yml, .json"
            )
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as error:
        first_line = str(error).splitlines()[0]
        raise DefconError(f"catalog file '{path}' is malformed: {first_line}") from None
    return parse_specs(data, str(path))


def dump_catalog(specs: Iterable[DefenseSpec], path: Path | str) -> None:
    """Write specs to a TOML, YAML or JSON catalog file that `load_catalog_file` reads back."""
    from defcon.storage import atomic_write_text

    path = Path(path)
    document = {"defense": [spec.model_dump(mode="json", exclude_defaults=True) for spec in specs]}
    suffix = path.suffix.lower()
    if suffix == ".toml":
        import tomli_w

        text = tomli_w.dumps(document)
    elif suffix in {".yaml", ".yml"}:
        text = yaml.safe_dump(document, sort_keys=False)
    elif suffix == ".json":
        text = json.dumps(document, indent=2)
    else:
        raise DefconError(f"cannot write catalog '{path}': accepted suffixes .toml, .yaml, .json")
    atomic_write_text(path, text)


def catalog_entry_points() -> list[metadata.EntryPoint]:
    """The installed providers of specs, or the checkout fallback when none is installed."""
    found = sorted(metadata.entry_points(group=CATALOG_GROUP), key=lambda ep: ep.name)
    if found:
        return found
    module = _CHECKOUT_FALLBACK.value.partition(":")[0]
    return [_CHECKOUT_FALLBACK] if find_spec(module) is not None else []


def specs_from(entry_point: metadata.EntryPoint) -> list[DefenseSpec]:
    """Load one provider and validate what it returns (a provider bug is a one-line error)."""
    try:
        provider = entry_point.load()
        specs = list(provider())
    except DefconError:
        raise
    except Exception as error:
        raise DefconError(
            f"defense catalog '{entry_point.name}' ({entry_point.value}) failed to load: "
            f"{type(error).__name__}: {error}"
        ) from None
    wrong = [s for s in specs if not isinstance(s, DefenseSpec)]
    if wrong:
        raise DefconError(
            f"defense catalog '{entry_point.name}' ({entry_point.value}) returned "
            f"{type(wrong[0]).__name__}, expected DefenseSpec objects"
        )
    return specs


def spec_files(folder: Path | str) -> list[DefenseSpec]:
    """Every `*.toml` spec file below `folder` (sorted): how a plugin package ships its specs."""
    return [
        spec for path in sorted(Path(folder).rglob("*.toml")) for spec in load_catalog_file(path)
    ]


@lru_cache(maxsize=1)
def builtin_catalog() -> Catalog:
    """The specs of every installed defense package (entry-point group `defcon.catalogs`)."""
    return Catalog(spec for ep in catalog_entry_points() for spec in specs_from(ep))


def load_catalog(extra_file: Path | str | None = None) -> Catalog:
    """The built-in catalog, plus the user's catalog file if one is given."""
    catalog = builtin_catalog()
    if extra_file is None:
        return catalog
    return catalog.merged(load_catalog_file(extra_file))
