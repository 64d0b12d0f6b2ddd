"""Nothing silent (issue 24): every change defcon makes to the user's data or model is a notice,
printed as a `note:` line before the table and kept in the record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import assert_one_line_error, run

from defcon.engine.data import from_arrays, read_csv
from defcon.errors import DefconError
from defcon.measure.composer import Composer
from defcon.measure.model_notices import acted_notices, architecture_notices
from defcon.planning.notices import ACTED, CHANGED, CHANGED_VS_COMBINED
from defcon.planning.records import CompositionRecord
from defcon.report.report_model import composition_report


def table(path: Path, rows: int = 300, **columns: object) -> Path:
    """A CSV of two numbers, an age (71 values), a sex and a text label that follows `a`."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=rows).round(3)
    frame = pd.DataFrame(
        {
            "a": a,
            "b": rng.normal(size=rows).round(3),
            "age": rng.integers(18, 89, size=rows),
            "sex": rng.choice(["F", "M"], rows),
            "y": np.where(a + 0.3 * rng.normal(size=rows) > 0, "malignant", "benign"),
        }
    )
    for name, values in columns.items():
        frame[name] = values
    frame.to_csv(path, index=False)
    return path


def kinds(notices) -> dict[str, list]:
    found: dict[str, list] = {}
    for notice in notices:
        found.setdefault(notice.kind, []).append(notice)
    return found


def test_reading_a_table_says_rows_dropped_label_order_and_groups(tmp_path: Path) -> None:
    b = np.random.default_rng(1).normal(size=300).round(3)
    b[[4, 7]] = np.nan
    data = read_csv(table(tmp_path / "t.csv", b=b), "y", "sex")
    found = kinds(data.notices)
    (dropped,) = found["rows_dropped"]
    assert "dropped 2 of 300 rows with missing values (in columns b)" in dropped.text
    (labels,) = found["label_encoding"]
    assert labels.labels == {"0": "benign", "1": "malignant"}
    assert "'malignant' is positive by alphabetical order" in labels.text
    assert "--target y:VALUE" in labels.text
    (groups,) = found["sensitive_groups"]
    assert groups.labels == {"0": "F", "1": "M"}
    assert sum(groups.values.values()) == 298  # the rows kept
    assert data.notes == tuple(n.text for n in data.notices)


def test_the_positive_class_can_be_chosen(tmp_path: Path) -> None:
    path = table(tmp_path / "t.csv")
    default = read_csv(path, "y")
    chosen = read_csv(path, "y:benign")
    assert (chosen.y["train"] == 1 - default.y["train"]).all()  # benign is now class 1
    (labels,) = kinds(chosen.notices)["label_encoding"]
    assert labels.labels == {"0": "malignant", "1": "benign"}
    assert "as --target y:benign asks" in labels.text
    assert chosen.digest != default.digest  # another encoding: other cache keys
    with pytest.raises(DefconError, match="'maybe' is not a value of 'y'; its values: benign"):
        read_csv(path, "y:maybe")
    three = table(tmp_path / "three.csv", y=np.resize(["a", "b", "c"], 300))
    with pytest.raises(DefconError, match="applies to two classes, and 'y' has 3"):
        read_csv(three, "y:a")


def test_numeric_labels_are_ordered_as_numbers(tmp_path: Path) -> None:
    a = np.random.default_rng(0).normal(size=300).round(3)
    data = read_csv(table(tmp_path / "t.csv", y=np.where(a > 0, 10, 2)), "y")
    (labels,) = kinds(data.notices)["label_encoding"]
    assert labels.labels == {"0": "2", "1": "10"}  # not '10' < '2' as text
    assert "by numeric order" in labels.text


def test_a_continuous_sensitive_column_is_refused_unless_binned(tmp_path: Path) -> None:
    path = table(tmp_path / "t.csv")
    with pytest.raises(DefconError) as caught:
        read_csv(path, "y", "age")
    message = str(caught.value)
    assert "71 distinct values" in message and "at most 20 groups" in message
    low, high = np.quantile(pd.read_csv(path)["age"], [0.25, 0.75])
    assert "--sensitive age:q4" in message and f"--sensitive age:{low:g},{high:g}" in message
    quantiles = read_csv(path, "y", "age:q4")
    (groups,) = kinds(quantiles.notices)["sensitive_groups"]
    assert len(groups.values) == 4 and groups.labels["bins"] == "q4"
    assert set(np.unique(quantiles.s["train"])) == {0, 1, 2, 3}
    assert max(groups.values.values()) - min(groups.values.values()) < 15  # near-equal groups
    edges = read_csv(path, "y", "age:30,50")
    ages = pd.read_csv(path)["age"].to_numpy()
    expected = np.searchsorted([30, 50], ages, side="right")
    assert (edges.s["train"] == expected).all()
    (groups,) = kinds(edges.notices)["sensitive_groups"]
    assert list(groups.labels.values())[:3] == ["age < 30", "30 ≤ age < 50", "age ≥ 50"]
    assert "3 groups binned from age" in groups.text


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("age:q1", "1 groups; accepted: age:qN"),
        ("age:q21", "21 groups"),
        ("age:50,30", "increasing"),
        ("age:young", "is not a binning"),
        ("age:200", "every row in one group"),
        ("sex:q2", "only a numeric column can be binned"),
        ("nope:q2", "'nope' is not a column"),
    ],
)
def test_bad_bins_are_refused(tmp_path: Path, spec: str, fragment: str) -> None:
    with pytest.raises(DefconError, match=fragment):
        read_csv(table(tmp_path / "t.csv"), "y", spec)


def test_arrays_say_when_they_are_renumbered() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = np.where(x[:, 0] > 0, 1, -1)
    data = from_arrays(x[:40], y[:40], x[40:], y[40:])
    (labels,) = kinds(data.notices)["label_encoding"]
    assert labels.labels == {"0": "-1", "1": "1"}
    plain = from_arrays(x[:40], (y[:40] > 0).astype(int), x[40:], (y[40:] > 0).astype(int))
    assert plain.notices == ()
    s = rng.integers(0, 40, size=60)
    with pytest.raises(DefconError, match="numpy.digitize"):
        from_arrays(x[:40], y[:40], x[40:], y[40:], s_train=s[:40], s_test=s[40:])


def test_dp_sgd_says_it_swaps_batchnorm_for_groupnorm(tmp_path: Path) -> None:
    composer = Composer("digits", profile="tiny", cache_dir=tmp_path / "cache")
    (notice,) = architecture_notices(composer.runner, ["dp_sgd", "model_watermark"], 0)
    assert notice.kind == "architecture" and notice.subject == "dp_sgd"
    assert notice.values == {"-BatchNorm2d": 2.0, "+GroupNorm": 2.0}
    assert "2 BatchNorm2d replaced by 2 GroupNorm" in notice.text
    assert architecture_notices(composer.runner, ["group_fairness"], 0) == ()


class FakeArms:
    """The per-seed readings acted_notices reads (ArmComparison.series)."""

    def __init__(self, readings: dict[str, list[dict[str, float]]]) -> None:
        self.readings = readings

    def series(self, arm: str, reading: str) -> list[dict[str, float]]:
        assert reading == ACTED
        return self.readings.get(arm, [])


def test_a_defense_that_changes_nothing_is_visible() -> None:
    arms = FakeArms(
        {
            "dp_sgd": [{CHANGED: 0.2, CHANGED_VS_COMBINED: 0.0}, {CHANGED: 0.4}],
            "group_fairness": [
                {CHANGED: 0.1, CHANGED_VS_COMBINED: 0.3, "group_fairness.acted.loss_share": 0.2}
            ],
            "combined": [{CHANGED: 0.3, "group_fairness.acted.loss_share": 0.0}],
        }
    )
    dp, fair = acted_notices(arms, ["dp_sgd", "group_fairness"])  # type: ignore[arg-type]
    assert dp.values == pytest.approx({"vs_undefended": 0.3, "added_to_group_fairness": 0.3})
    assert "dp_sgd alone changes 30.0% of the undefended model's test predictions" in dp.text
    assert "may not have acted" not in dp.text
    assert fair.values == pytest.approx(
        {"vs_undefended": 0.1, "added_to_dp_sgd": 0.0, "loss_share_alone": 0.2,
         "loss_share_combined": 0.0}
    )  # fmt: skip
    assert "its term was 20.0% of the training loss (alone)" in fair.text
    assert "added to dp_sgd it changed not one: it may not have acted there" in fair.text


def test_old_records_load_without_notices() -> None:
    fields = CompositionRecord.model_fields
    assert fields["notices"].default == ()
    assert not fields["notices"].is_required()


def test_compose_prints_notes_before_the_table_and_records_them(tmp_path: Path) -> None:
    b = np.random.default_rng(1).normal(size=300).round(3)
    b[5] = np.nan
    path = table(tmp_path / "t.csv", b=b)
    out = tmp_path / "out"
    result = run("compose", "dp_sgd", "group_fairness", "--dataset", str(path), "--target",
                 "y:benign", "--sensitive", "age:q2", "--profile", "tiny", "--seeds", "1",
                 "--epochs", "2", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    notes = [i for i, line in enumerate(lines) if line.startswith("note: ")]
    table_at = next(i for i, line in enumerate(lines) if "no defense" in line)
    assert notes and max(notes) < table_at
    text = "\n".join(lines)
    for fragment in ("dropped 1 of 300 rows", "'benign' is positive", "age < ",
                     "BatchNorm1d replaced by 1 GroupNorm", "group_fairness alone changes"):  # fmt: skip
        assert fragment in text, fragment
    (record,) = (out / "records").glob("*.json")
    notices = json.loads(record.read_text())["notices"]
    assert [n["kind"] for n in notices] == [
        "rows_dropped", "label_encoding", "sensitive_groups", "architecture", "defense_acted",
        "defense_acted",
    ]  # fmt: skip
    acted = {n["subject"]: n["values"] for n in notices if n["kind"] == "defense_acted"}
    assert set(acted) == {"dp_sgd", "group_fairness"}
    assert all(0 <= v["vs_undefended"] <= 1 for v in acted.values())
    assert "loss_share_alone" in acted["group_fairness"]
    report = composition_report(CompositionRecord.model_validate_json(record.read_text()))
    assert "Changed by defcon: --target 'y': class 0 = 'malignant'" in "\n".join(report.summary)


def test_a_continuous_sensitive_column_is_one_error_line(tmp_path: Path) -> None:
    path = table(tmp_path / "t.csv")
    result = run("compose", "dp_sgd", "group_fairness", "--dataset", str(path), "--target", "y",
                 "--sensitive", "age", "--profile", "tiny", "--out", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(result, "--sensitive 'age' has 71 distinct values", "age:q4")
    assert not (tmp_path / "out" / "cache").exists()
