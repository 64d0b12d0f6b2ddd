"""The package's folders are its layers and its imports point one way: no module of defcon imports
(at the top or inside a function) a module of a higher layer or anything that imports it back,
and the core never imports the defenses' package.

Read from the source (ast), so a circle or an upward import hidden behind a lazy import is found
too; imports under `if TYPE_CHECKING:` never run and are left out. Each layer is also imported
alone in a fresh interpreter, which catches an import the source does not spell (importlib).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. "defcon" is the torch-free spec layer: the modules left at the top level and
# `defcon.checker` (frozen at the tag prospective-2, so not moved into a `spec/` folder).
LAYERS = (
    "defcon", "defcon.planning", "defcon.engine", "defcon.risks", "defcon.measure",
    "defcon.report", "defcon.audit", "defcon.bench", "defcon.cli",
)  # fmt: skip
SPEC = {
    "defcon", "defcon.catalog", "defcon.effectiveness", "defcon.errors", "defcon.plugins",
    "defcon.storage", "defcon.terminal", "defcon.user_code", "defcon.vocabulary",
}  # fmt: skip


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden = {id(n) for node in ast.walk(tree) if _type_checking(node)
              for sub in node.body for n in ast.walk(sub)}  # fmt: skip
    found = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in (ROOT / "defcon").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports(path):
            while target and target not in modules:  # `from pkg import mod` → pkg.mod
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _layer(module: str) -> str:
    """The layer a module of defcon belongs to: its folder, or the spec layer at the top."""
    parts = module.split(".")
    folder = ".".join(parts[:2])
    return folder if folder in LAYERS else "defcon"


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a higher layer than the importer's, as 'a → b'."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(
        f"{name} → {target}"
        for name, targets in graph.items()
        for target in targets
        if rank[_layer(target)] > rank[_layer(name)]
    )


def test_the_folders_are_the_layers() -> None:
    graph = _graph()
    packages = {*LAYERS, "defcon.checker"}
    top = {m for m in graph if m.count(".") <= 1 and m not in packages - {"defcon"}}
    assert top == SPEC, f"modules outside the layers' folders: {sorted(top - SPEC)}"
    folders = {".".join(m.split(".")[:2]) for m in graph if m.count(".") >= 2}
    assert folders <= packages, f"a folder that is no layer: {sorted(folders - packages)}"


def test_no_import_runs_back_up_the_layers() -> None:
    assert _upward(_graph()) == []


def test_the_layer_check_can_fail() -> None:
    assert _upward({"defcon.engine.data": {"defcon.measure.cache"}}) == [
        "defcon.engine.data → defcon.measure.cache"
    ]
    assert _upward({"defcon.measure.cache": {"defcon.engine.data", "defcon.errors"}}) == []
    assert _layer("defcon.checker.base") == "defcon"


def _layer_modules(layer: str) -> list[str]:
    graph = _graph()
    return sorted(m for m in graph if _layer(m) == layer)


_TORCH_LAYERS = {"defcon.engine", "defcon.risks", "defcon.measure", "defcon.audit", "defcon.bench"}


@pytest.mark.parametrize(
    "layer",
    [pytest.param(x, marks=pytest.mark.slow) if x in _TORCH_LAYERS else x for x in LAYERS],
)  # the layers that import torch take seconds each: the static check above covers them by default
def test_each_layer_imports_alone(layer: str) -> None:
    """Importing every module of a layer in a fresh interpreter loads nothing from above it."""
    code = (
        "import importlib, sys\n"
        f"for name in {_layer_modules(layer)!r}: importlib.import_module(name)\n"
        "print('\\n'.join(m for m in sys.modules if m == 'defcon' or m.startswith('defcon.')))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300, capture_output=True,
        text=True,
    ).stdout.split()  # fmt: skip
    rank = {name: i for i, name in enumerate(LAYERS)}
    above = [m for m in loaded if rank[_layer(m)] > rank[layer]]
    assert above == [], f"importing {layer} alone loaded {above}"


def test_no_import_circle_in_defcon() -> None:
    circle = _cycle(_graph())
    assert circle is None, "import circle: " + " → ".join(circle or [])


def test_the_check_can_fail() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_never_imports_the_defenses_package() -> None:
    for path in (ROOT / "defcon").rglob("*.py"):
        assert not any(t.startswith("pipeline_stages") for t in _imports(path)), path
