"""Import what a user named ('module:attribute'), and nothing else.

The one door for user code that is loaded by name: a `--model` factory, a catalog's
`implementation`; and the entry-point doors (`installed_plugins`) through which an installed
package adds a risk attack, a technique or a dataset. Low in the package (it needs only the error vocabulary and the user-code
boundary), so models, fingerprints and the defense registry can all use it without importing
each other.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable
from functools import cache
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from defcon.errors import DefconError, unknown
from defcon.user_code import boundary, describe


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


# --------------------------------------------------------------------------- entry-point doors

# The entry-point groups through which an installed package adds a kind of thing, and what each
# entry point must name. Defense catalogs have their own door (`defcon.catalog`), which returns
# specs rather than objects.
PLUGIN_GROUPS: dict[str, str] = {
    "defcon.risks": "a RiskAttack subclass (one attack for a risk no attack measures yet)",
    "defcon.techniques": "a Technique object (name, summary, check)",
    "defcon.datasets": "a DatasetEntry (name, loader 'module:function', kind, classes, …)",
}


def entry_points_of(group: str) -> list[metadata.EntryPoint]:
    """The installed entry points of `group`, by name (the order they are registered in)."""
    return sorted(metadata.entry_points(group=group), key=lambda ep: ep.name)


@cache
def installed_plugins(group: str) -> tuple[tuple[str, Any], ...]:
    """Each installed entry point of `group` as (its name, the object it names), loaded once.

    Loading an entry point imports the module it names, as any installed package is imported
    (nothing is added to `sys.path`, nothing runs from the working folder); only that import
    and the attribute lookup run here. A module that fails to import, or a name it lacks, is
    one error line naming the package's entry point; the registry that asks checks the type
    of what came back and registers it.
    """
    if group not in PLUGIN_GROUPS:
        raise unknown("plug-in group", group, PLUGIN_GROUPS)
    found = []
    for entry_point in entry_points_of(group):
        with boundary(f"plug-in '{entry_point.name}' ({group})", f"loading {entry_point.value}"):
            try:
                found.append((entry_point.name, entry_point.load()))
            except (ImportError, AttributeError) as error:
                raise DefconError(
                    f"plug-in '{entry_point.name}' of {group} ({entry_point.value}) cannot be "
                    f"loaded ({describe(error)}); it must name {PLUGIN_GROUPS[group]}"
                ) from error
    return tuple(found)


def register_plugins(
    group: str,
    registered: Callable[[Any], bool],
    problem: Callable[[Any], str | None],
    register: Callable[[Any], object],
) -> None:
    """Register each installed plug-in of `group` not `registered` yet, after `problem` found
    nothing wrong with it; a wrong one is a one-line refusal naming its entry point."""
    for name, value in installed_plugins(group):
        if registered(value):
            continue  # registered on an earlier call
        found = problem(value)
        if found is not None:
            raise DefconError(
                f"plug-in '{name}' of {group} is refused: {found}; it must name "
                f"{PLUGIN_GROUPS[group]}"
            )
        register(value)
