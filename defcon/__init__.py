"""defcon: plan and verify combinations of machine-learning defenses without conflicts."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "check": "defcon.checker",
    "Verdict": "defcon.checker",
    "load_pipeline": "defcon.measure.artefact",
    "read_manifest": "defcon.measure.artefact",
}


def __getattr__(name: str) -> Any:
    """`defcon.check` without importing the checker (or anything heavy) on `import defcon`."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'defcon' has no attribute {name!r}")
