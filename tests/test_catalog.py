"""The catalog: built-in declarations, user catalog files in three formats, and the one-line
errors a bad file produces."""

from __future__ import annotations

import pytest

from defcon.catalog import Catalog, builtin_catalog, dump_catalog, load_catalog, load_catalog_file
from defcon.errors import DefconError
from defcon.vocabulary import DefenseSpec, Risk, Slot, Stage

USER_SPECS = """
[[defense]]
name = "outlier_filter"
title = "Outlier filter on the training data"
stage = "pre"
mitigates = ["poisoning"]
data_kinds = ["tabular"]
[[defense.metrics]]
name = "attack_success_rate"
direction = "lower"
tolerance = 0.05

[[defense]]
name = "radioactive_mark"
title = "Radioactive data marking"
stage = "in"
mitigates = ["data_misuse"]
slots = ["loss_term"]
uses = [{ risk = "poisoning", reason = "marked samples act like a clean-label backdoor" }]
implementation = "mypackage.marks:Radioactive"
[[defense.metrics]]
name = "detection_rate"
direction = "higher"
tolerance = 0.1
"""


def test_builtin_catalog_holds_the_designed_defenses():
    catalog = builtin_catalog()
    stages = {stage: {s.name for s in specs} for stage, specs in catalog.by_stage().items()}
    assert {"data_watermark", "model_watermark"} <= stages[Stage.PRE]
    assert {"backdoor_pruning", "dataset_inference", "explanations", "output_watermark"} <= (
        stages[Stage.POST]
    )
    users = {s.name for s in catalog.values() if Risk.POISONING in s.uses_risks}
    assert users == {"model_watermark", "data_watermark", "certified_watermark"}
    assert all(s.reason_for(Risk.POISONING) for s in catalog.values() if s.name in users)


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_round_trip_through_every_format(tmp_path, suffix):
    specs = [*builtin_catalog().values(), *load_catalog_file(_write(tmp_path, USER_SPECS))]
    path = tmp_path / f"catalog{suffix}"
    dump_catalog(specs, path)
    assert load_catalog_file(path) == specs


def test_user_file_merges_with_builtins(tmp_path):
    catalog = load_catalog(_write(tmp_path, USER_SPECS))
    assert len(catalog) == len(builtin_catalog()) + 2  # the two user specs
    mark = catalog["radioactive_mark"]
    assert mark.slots == frozenset({Slot.LOSS_TERM})
    assert mark.reason_for(Risk.POISONING).startswith("marked samples")
    assert mark.implementation == "mypackage.marks:Radioactive"


def test_a_user_spec_may_not_replace_a_builtin(tmp_path):
    clone = USER_SPECS.replace('name = "outlier_filter"', 'name = "dp_sgd"')
    with pytest.raises(DefconError, match="'dp_sgd' is declared twice"):
        load_catalog(_write(tmp_path, clone))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[defense]\nname = "x"', "malformed"),
        ('[[defense]]\nname = "x"', "defense 'x': title"),
        (
            USER_SPECS.replace(
                'mitigates = ["poisoning"]',
                'mitigates = ["poisoning"]\nuses = [{ risk = "poisoning", reason = "r" }]',
            ),
            "both uses and mitigates poisoning",
        ),
        (USER_SPECS.replace('"poisoning"]', '"poisonnig"]', 1), "'poisonnig' is not accepted"),
        (USER_SPECS.replace('stage = "pre"', 'stage = "during"'), "'during' is not accepted"),
        (USER_SPECS.replace('slots = ["loss_term"]', ""), "must declare the slots"),
        (USER_SPECS.replace("tolerance = 0.05", "tolerance = -1"), "tolerance"),
        ("title = 'no defenses here'", "under the key 'defense'"),
    ],
)
def test_bad_catalog_files_give_one_line_errors(tmp_path, text, message):
    with pytest.raises(DefconError, match=message) as caught:
        load_catalog_file(_write(tmp_path, text))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.toml", None, "does not exist"),
        ("specs.txt", "anything", "suffix '.txt'"),
        ("bad.yaml", "defense: [unclosed", "malformed"),
        ("bad.json", '{"defense": [', "malformed"),
    ],
)
def test_bad_catalog_paths_give_one_line_errors(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(DefconError, match=message):
        load_catalog_file(path)


def test_resolve_checks_count_repeats_and_names():
    catalog = builtin_catalog()
    assert [s.name for s in catalog.resolve(["dp_sgd", "explanations"])] == [
        "dp_sgd",
        "explanations",
    ]
    with pytest.raises(DefconError, match="at least 2"):
        catalog.resolve(["dp_sgd"])
    with pytest.raises(DefconError, match="named twice"):
        catalog.resolve(["dp_sgd", "dp_sgd"])
    with pytest.raises(DefconError, match="Did you mean 'dp_sgd'"):
        catalog.resolve(["dp_sdg", "explanations"])


def test_catalog_rejects_duplicate_names():
    spec = builtin_catalog()["dp_sgd"]
    with pytest.raises(DefconError, match="declared twice"):
        Catalog([spec, spec])


def test_spec_file_is_validated_like_a_python_declaration():
    spec = builtin_catalog()["model_watermark"]
    assert DefenseSpec.model_validate(spec.model_dump(mode="json")) == spec


def _write(tmp_path, text: str):
    path = tmp_path / "user.toml"
    path.write_text(text)
    return path
