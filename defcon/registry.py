"""Find the mechanism behind a catalog name: the spec's `implementation` ('module:Class').

Works the same for a built-in defense and a user's own class named in a catalog file: the class
is imported by name, checked against its spec (stage contract, slots vs hooks) and bound to it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from defcon import optional
from defcon.catalog import Catalog, builtin_catalog
from defcon.defense import Defense, contract_problems
from defcon.errors import DefconError
from defcon.user_code import boundary, call, describe
from defcon.vocabulary import DefenseSpec


def _plugin_folder(top: str) -> Path | None:
    """The working folder, where it holds the top-level module or package `top` (`top.py` or
    `top/`): the one place besides the installed packages a plug-in's name is looked up."""
    folder = Path.cwd()
    spec = importlib.machinery.PathFinder.find_spec(top, [str(folder)])
    return folder if spec is not None else None


def import_plugin(module_name: str) -> ModuleType:
    """Import the module a user named, without leaving anything importable behind.

    A name the installed packages provide is imported as usual. Otherwise its top-level module
    or package is loaded from the working folder by its explicit location; during that import
    only, the folder sits at the *end* of `sys.path`, so the plug-in's sibling modules are found
    while an installed library always wins over a file of the same name (`./opacus.py` never
    runs). The folder is removed afterwards, and `""` is never added: nothing else the program
    imports later can come from where the user happens to stand.
    """
    if module_name in sys.modules:
        return sys.modules[module_name]
    top = module_name.partition(".")[0]
    folder = None if top in sys.modules else _plugin_folder(top)
    if folder is not None and not installed(top):
        spec = importlib.machinery.PathFinder.find_spec(top, [str(folder)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        entry = str(folder)
        added = entry not in sys.path
        if added:
            sys.path.append(entry)
        sys.modules[top] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(top, None)
            raise
        finally:
            if added and entry in sys.path:
                sys.path.remove(entry)
        PLUGIN_FOLDERS[top] = folder
    return importlib.import_module(module_name)


PLUGIN_FOLDERS: dict[str, Path] = {}  # top-level plug-in name → the folder it was loaded from


def installed(module_name: str) -> bool:
    """Whether the top-level package of `module_name` comes from outside the working folder
    (the standard library, site-packages): there, an import never picks a user's file."""
    top = module_name.partition(".")[0]
    return top in sys.builtin_module_names or (
        importlib.machinery.PathFinder.find_spec(top, _clean_path()) is not None
    )


def _clean_path() -> list[str]:
    """`sys.path` without the entries that stand for the working folder."""
    here = os.getcwd()
    return [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != here]


def load_object(path: str, what: str) -> Any:
    """Import `module:attribute` (dots allowed in both) with `import_plugin`: a user's module in
    the working folder is found as `python -m` would, but nothing stays importable from there."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise DefconError(f"{what} '{path}' is not of the form 'module:name'")
    with boundary(f"{what} '{path}'", f"importing '{module_name}'"):
        try:
            value: Any = import_plugin(module_name)
            for part in attribute.split("."):
                value = getattr(value, part)
        except (ImportError, AttributeError) as error:
            raise DefconError(f"{what} '{path}' cannot be loaded ({describe(error)})") from error
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
