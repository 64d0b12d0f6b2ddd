"""docs/defenses.md is generated from the catalog: it lists every defense with its settings and
never drifts from the specs and configs."""

from __future__ import annotations

from pathlib import Path

from defcon.catalog import builtin_catalog
from defcon.engine.defense_settings import config_class
from defcon.report.defenses_doc import catalog_markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "defenses.md"


def test_the_committed_page_matches_the_catalog() -> None:
    expected = catalog_markdown(builtin_catalog())
    assert PAGE.read_text(encoding="utf-8") == expected, (
        "docs/defenses.md is stale: run `python -m defcon.report.defenses_doc > docs/defenses.md`"
    )


def test_every_defense_and_setting_is_on_the_page() -> None:
    page = PAGE.read_text(encoding="utf-8")
    for name in builtin_catalog():
        assert f"## `{name}`" in page
        for field in config_class(name).model_fields:
            assert f"| `{field}` |" in page


def test_a_pipe_in_a_declaration_cannot_break_the_table() -> None:
    spec = builtin_catalog()["dp_sgd"]
    odd = spec.model_copy(update={"title": "a | b\nc"})
    page = catalog_markdown({"dp_sgd": odd})
    assert "a \\| b c" in page
