"""`defcon audit` on the command line: table, JSON record, heatmap, caching, every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run

pytestmark = pytest.mark.filterwarnings("ignore")


def test_audit_two_defenses_writes_table_json_heatmap_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = (
        "audit", "backdoor_pruning", "explanations", "--dataset", "digits", "--seeds", "2",
        "--profile", "tiny", "--out", str(out), "--risk", "membership_inference",
        "--risk", "model_theft", "--json", str(tmp_path / "a.json"),
    )  # fmt: skip
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "Audit of backdoor_pruning → explanations on digits" in text
    assert "mia_auc" in text and "surrogate_fidelity" in text
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["arms"] == ["no defense", "backdoor_pruning", "explanations", "combined"]
    assert record["order"] == ["backdoor_pruning", "explanations"]
    assert set(record["not_measured"]) == {"data_misuse", "opacity"}
    mia = next(m for m in record["metrics"] if m["metric"] == "mia_auc")
    assert len(mia["values"]["combined"]["values"]) == 2
    assert mia["risk_change"]["combined"] in {"up", "down", "none"}
    assert (
        record["predictions"]["backdoor_pruning"]["membership_inference"]["links"][0]["factor"]
        == "M1"
    )
    assert list((out / "plots").glob("audit-*.png"))
    again = run(*args[:-2], "--json", "-")  # everything from the cache, JSON alone on stdout
    assert again.exit_code == 0, again.stderr
    cached = json.loads(again.stdout)
    assert cached["cache"]["models_trained"] == 0 and cached["cache"]["measurements_computed"] == 0
    assert cached["metrics"] == record["metrics"]


def test_audit_reports_invariance_beside_robust_accuracy_on_images_only(tmp_path: Path) -> None:
    common = ("--seeds", "1", "--profile", "tiny", "--risk", "evasion", "--out", str(tmp_path))
    images = run("audit", "--dataset", "digits", *common, "--json", str(tmp_path / "d.json"))
    assert images.exit_code == 0, images.stderr
    metrics = {m["metric"]: m for m in json.loads((tmp_path / "d.json").read_text())["metrics"]}
    assert set(metrics) == {"robust_accuracy", "invariance_error", "invariance_label_changing"}
    assert not metrics["invariance_error"]["primary"]
    # ε = 0.1 on digits holds no label change the oracle recognises: n = 0, no number invented
    assert metrics["invariance_label_changing"]["values"]["no defense"]["values"] == [0.0]
    assert metrics["invariance_error"]["values"]["no defense"]["values"] == [None]
    text = " ".join(images.stdout.split())
    assert "invariance_error n/a on some seed" in text and "not measurable" in text
    table = run("audit", "--dataset", "adult", *common, "--json", str(tmp_path / "a.json"))
    assert table.exit_code == 0, table.stderr
    record = json.loads((tmp_path / "a.json").read_text())
    assert [m["metric"] for m in record["metrics"]] == ["robust_accuracy"]
    assert "tabular" in record["not_measured"]["evasion: invariance_error"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["audit", "nonsense"], ["unknown defense 'nonsense'"]),
        (["audit", "--dataset", "mnist"], ["unknown dataset 'mnist'"]),
        (["audit", "--seeds", "0"], ["--seeds must be at least 1"]),
        (["audit", "--risk", "evasions"], ["unknown risk 'evasions'", "evasion"]),
        (["audit", "--risk", "opacity"], ["risk 'opacity' cannot be measured"]),
        (["audit", "--risk", "discrimination"], ["cannot be measured on digits", "sensitive"]),
        (["audit", "group_fairness"], ["cannot audit on digits", "tabular data only"]),
        (["audit", "dp_sgd", "dp_sgd"], ["named twice"]),
        (["audit", "--profile", "huge"], ["unknown profile 'huge'"]),
    ],
)
def test_audit_bad_input(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    result = run(*args, "--out", str(tmp_path / "o"))
    assert_one_line_error(result, *fragments)


def test_audit_json_to_a_directory_is_refused(tmp_path: Path) -> None:
    result = run("audit", "--json", str(tmp_path), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "--json", "directory")
