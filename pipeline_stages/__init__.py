"""Defenses grouped by pipeline stage: one module (and one spec file) per defense.

defcon discovers them through the `defcon.catalogs` entry point (pyproject.toml), which names
`catalog` below; the core never imports this package directly.
"""

from __future__ import annotations

from pathlib import Path

from defcon.catalog import spec_files
from defcon.vocabulary import DefenseSpec

STAGE_FOLDERS = ("pre_training", "in_training", "post_training")


def catalog() -> list[DefenseSpec]:
    """The spec files beside the defense modules, one per defense, in pipeline order."""
    root = Path(__file__).resolve().parent
    return [spec for folder in STAGE_FOLDERS for spec in spec_files(root / folder)]
