"""The JSON record of one composition: what was run, what was measured, what was concluded."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from defcon.effectiveness import MetricVerdict, Summary
from defcon.vocabulary import Stage

Label = Literal["effective", "ineffective"]

_VERSIONED = (
    "defcon",
    "torch",
    "opacus",
    "fairlearn",
    "captum",
    "torchattacks",
    "numpy",
    "scikit-learn",
)


class DefenseResult(BaseModel):
    """One defense of the combination: each of its metrics alone vs combined, and the verdict."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    defense: str
    stage: Stage
    metrics: tuple[MetricVerdict, ...]
    effective: bool
    clean_accuracy_alone: Summary
    scenario_alone: tuple[str, ...]


class CompositionRecord(BaseModel):
    """Everything about one measured combination; written atomically as JSON."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    defenses: tuple[str, ...]
    order: tuple[str, ...]
    dataset: str
    profile: str
    seeds: tuple[int, ...]
    scenario: tuple[str, ...] = Field(description="threats active in the combined run")
    results: tuple[DefenseResult, ...]
    clean_accuracy_no_defense: Summary
    clean_accuracy_combined: Summary
    label: Label
    predicted: dict[str, Label]
    forced: bool
    tolerances: dict[str, float]
    versions: dict[str, str]
    wall_time_s: float
    cache: dict[str, int]
    warnings: tuple[str, ...] = ()

    def result(self, defense: str) -> DefenseResult:
        for result in self.results:
            if result.defense == defense:
                return result
        raise KeyError(defense)


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape the numbers."""
    found = {"python": platform.python_version()}
    for package in _VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found
