"""docs/api.md names only things that exist: each `defcon.…` name in its tables imports and
carries a docstring."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
NAMES = sorted(set(re.findall(r"`(defcon(?:\.\w+)+)", PAGE.read_text(encoding="utf-8"))))


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def test_the_page_names_the_public_surface() -> None:
    assert len(NAMES) >= 25
    for name in (
        "defcon.check",
        "defcon.load_pipeline",
        "defcon.measure.composer.Composer.compose",
    ):
        assert name in NAMES


@pytest.mark.parametrize("dotted", NAMES)
def test_each_name_exists_and_says_what_it_does(dotted: str) -> None:
    found = _resolve(dotted)
    assert inspect.getdoc(found), f"{dotted} has no docstring"
