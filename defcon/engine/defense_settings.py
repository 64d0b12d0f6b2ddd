"""A user's defense settings: `--set NAME.FIELD=VALUE` and `--settings FILE.toml`, one parser.

Every command that runs defenses (compose, audit, bench, `check --technique pilot`) reads the
settings here, so they are checked the same way: by the defense's own pydantic `Config`, before
anything trains. The values reach the `Composer`'s `configs=`, whose defenses put their full
config into every cache key, so the cache follows the settings.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from defcon.errors import DefconError

if TYPE_CHECKING:
    from defcon.catalog import Catalog

Settings = dict[str, dict[str, Any]]


def type_name(annotation: Any) -> str:
    """A field's type as a user reads it: `float | None`, `int`, `Literal['a', 'b']`."""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def accepted_fields(config: type[BaseModel]) -> str:
    """`name (type), ...` of every setting a config accepts."""
    fields = config.model_fields
    if not fields:
        return "none (this defense has no settings)"
    return ", ".join(f"{name} ({type_name(f.annotation)})" for name, f in fields.items())


def config_class(name: str, catalog: Catalog | None = None) -> type[BaseModel]:
    """The pydantic config of the defense `name` (an unknown one is a `DefconError`)."""
    from defcon.engine.registry import defense_class

    spec = (catalog or _builtin())[name]
    return defense_class(spec).Config


def _builtin() -> Catalog:
    from defcon.catalog import builtin_catalog

    return builtin_catalog()


def parse_value(text: str) -> Any:
    """A TOML value (`1.2`, `true`, `[0, 3]`, `"a"`); anything else is kept as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(items: Sequence[str]) -> Settings:
    """`NAME.FIELD=VALUE` strings → {name: {field: value}} (a later one wins)."""
    settings: Settings = {}
    for item in items:
        target, sep, value = item.partition("=")
        name, dot, field = target.strip().partition(".")
        if not sep or not dot or not name or not field.strip():
            raise DefconError(
                f"--set '{item}' is not accepted; expected NAME.FIELD=VALUE, "
                "e.g. --set dp_sgd.noise_multiplier=1.2"
            )
        settings.setdefault(name, {})[field.strip()] = parse_value(value.strip())
    return settings


def read_settings_file(path: Path) -> Settings:
    """A TOML file of one table per defense: `[dp_sgd]` then `noise_multiplier = 1.2`."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DefconError(f"--settings {path}: cannot read it ({error.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DefconError(f"--settings {path}: not valid TOML ({error})") from None
    for name, table in data.items():
        if not isinstance(table, dict):
            raise DefconError(
                f"--settings {path}: '{name}' is not a table; expected one [NAME] table per "
                "defense, e.g. [dp_sgd] then noise_multiplier = 1.2"
            )
    return data


def validated(
    settings: Mapping[str, Mapping[str, Any]], catalog: Catalog | None = None
) -> Settings:
    """`settings` checked by each defense's `Config`; the values as that config reads them."""
    checked: Settings = {}
    for name, values in settings.items():
        config = config_class(name, catalog)
        unknown = sorted(set(values) - set(config.model_fields))
        if unknown:
            raise DefconError(
                f"defense '{name}' has no setting '{unknown[0]}'; accepted: "
                f"{accepted_fields(config)}"
            )
        try:
            parsed = config.model_validate(dict(values))
        except ValidationError as error:
            problem = error.errors()[0]
            what = (
                f"{name}.{problem['loc'][0]}={values.get(str(problem['loc'][0]))!r}"
                if problem["loc"]
                else f"the settings of '{name}' ({settings_text({name: values})})"
            )
            raise DefconError(
                f"{what} is not accepted ({problem['msg'].lower()}); "
                f"accepted: {accepted_fields(config)}"
            ) from None
        dumped = parsed.model_dump(mode="json")
        checked[name] = {field: dumped[field] for field in values}
    return checked


def defense_settings(
    assignments: Sequence[str] | None, file: Path | None, catalog: Catalog | None = None
) -> Settings:
    """The settings of `--settings FILE` overridden by each `--set`, checked."""
    merged: Settings = {}
    if file is not None:
        for name, table in read_settings_file(file).items():
            merged[name] = dict(table)
    for name, values in parse_assignments(assignments or []).items():
        merged.setdefault(name, {}).update(values)
    return validated(merged, catalog)


def settings_text(settings: Mapping[str, Mapping[str, Any]]) -> str:
    """One line echoing the settings used: `dp_sgd.noise_multiplier=1.2, ...`."""
    return ", ".join(
        f"{name}.{field}={value}"
        for name, values in settings.items()
        for field, value in values.items()
    )


def settings_rows(config: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """(setting, default, type, meaning) for each field of a defense's config."""
    rows = []
    for name, field in config.model_fields.items():
        default = "required" if field.is_required() else repr(field.get_default())
        rows.append((name, default, type_name(field.annotation), field.description or ""))
    return rows
