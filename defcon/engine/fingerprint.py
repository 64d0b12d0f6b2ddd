"""Hashes of the code that trains and measures, so cache keys change when that code changes.

A cached model or measurement is only valid for the code that produced it. Instead of a version
number bumped by hand, cache keys carry a hash of the source files involved: the core modules
that build data, models, attacks and the training loop, and each defense's own module (with the
project modules it imports from its package, e.g. the watermarks' shared stamping code).
Presentation modules (CLI, reports, scoring) are left out: changing them changes no number.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import modulefinder
import site
import sys
import sysconfig
from functools import cache
from pathlib import Path
from types import ModuleType

import defcon

CORE_MODULES = (
    "measure/arms", "engine/attacks", "measure/cache", "measure/composer", "engine/data",
    "engine/defense", "engine/devices", "engine/models", "measure/pipelines",
    "planning/profiles", "engine/registry", "engine/training",
)  # fmt: skip


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@cache
def core_code() -> str:
    """Hash of the core modules every model and measurement depends on."""
    root = Path(defcon.__file__).parent
    return _digest([root / f"{name}.py" for name in CORE_MODULES])


@cache
def rule_code() -> str:
    """Hash of the verdict rule and its looks (`defcon.effectiveness`): it names a composition
    record's rule beside the core's hash, and, kept out of the core, a change to it re-judges
    cached models instead of retraining them."""
    return _digest([Path(defcon.__file__).parent / "effectiveness.py"])


@cache
def probes_code() -> str:
    """Hash of the factor probes: a change re-probes cached models without retraining them."""
    return _digest([Path(defcon.__file__).parent / "engine" / "probes.py"])


def _project_modules(module: ModuleType) -> list[Path]:
    """The module's file and the files of the modules of its own top-level package it uses."""
    package = module.__name__.split(".")[0]
    files = {Path(inspect.getfile(module))}
    for value in vars(module).values():
        owner = (
            value
            if isinstance(value, ModuleType)
            else sys.modules.get(getattr(value, "__module__", "") or "")
        )
        if owner is None or owner is module or not owner.__name__.startswith(package + "."):
            continue
        try:
            files.add(Path(inspect.getfile(owner)))
        except TypeError:  # built-in
            continue
    return sorted(files)


@cache
def code_of(cls: type) -> str:
    """Hash of the source behind a defense class (its module and its package's helpers; for a
    user's plug-in, its whole package: `plugin_code`)."""
    module = sys.modules[cls.__module__]
    top = module.__name__.split(".")[0]
    if top == "defcon":
        return core_code()
    if user_folder(top) is not None:
        return plugin_code(module.__name__)
    return _digest(_project_modules(module))


def user_folder(top: str) -> Path | None:
    """The folder a user's top-level module or package `top` was imported from, or None where
    it is not a user's: defcon, an installed defense catalog (`defcon.catalogs`), or anything in
    the standard library or site-packages."""
    from defcon.catalog import catalog_entry_points
    from defcon.plugins import PLUGIN_FOLDERS

    if top in PLUGIN_FOLDERS:
        return PLUGIN_FOLDERS[top]
    providers = {ep.value.partition(":")[0].split(".")[0] for ep in catalog_entry_points()}
    file = getattr(sys.modules.get(top), "__file__", None)
    if top == "defcon" or top in providers or not file:
        return None
    path = Path(file).resolve()
    folder = path.parent.parent if path.name == "__init__.py" else path.parent
    system = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    system |= set(site.getsitepackages()) | {site.getusersitepackages()}
    if any(folder.is_relative_to(Path(place).resolve()) for place in system if place):
        return None
    return folder


def plugin_code(module_name: str) -> str:
    """Hash of every source file a user's plug-in module uses from its own folder: the module,
    its package, and every module it imports (at import time or inside functions, directly or
    through another) that is found there rather than in the standard library or site-packages.

    Found by a static scan (`modulefinder`, which compiles but never runs code) restricted to
    the plug-in's folder, so editing a helper the factory or defense imports is a new key.
    """
    folder = user_folder(module_name.partition(".")[0])
    if folder is None:
        raise ValueError(f"'{module_name}' is not a user's module")
    return _plugin_code(module_name, folder)


@cache
def _plugin_code(module_name: str, folder: Path) -> str:
    finder = modulefinder.ModuleFinder(path=[str(folder)])
    with contextlib.suppress(ImportError, SyntaxError):  # it imported: hash what was found
        finder.import_hook(module_name)
    from defcon.plugins import installed

    files = {
        Path(found.__file__).resolve()
        for name, found in finder.modules.items()
        if found.__file__ and Path(found.__file__).suffix == ".py" and not installed(name)
    }  # a file shadowing an installed library (./opacus.py) is not what the plug-in imports
    own = getattr(sys.modules.get(module_name), "__file__", None)
    if own:  # found by name or not (a script's __main__), the module's own file counts
        files.add(Path(own).resolve())
    root = folder.resolve()
    return _digest_named(sorted(f for f in files if f.is_relative_to(root)), root)


def _digest_named(paths: list[Path], root: Path) -> str:
    """Like `_digest`, naming each file by its path below `root` (two helpers named the same in
    different subpackages are different files)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@cache
def invariance_code() -> str:
    """Hash of the invariance measurement: a change re-measures it, retrains nothing."""
    return _digest([Path(defcon.__file__).parent / "engine" / "invariance.py"])


@cache
def risks_code() -> str:
    """Hash of the risk attacks (defcon/risks, and the invariance measurement evasion reports):
    a change re-measures audits, retrains nothing."""
    root = Path(defcon.__file__).parent
    return _digest([*sorted((root / "risks").glob("*.py")), root / "engine" / "invariance.py"])
