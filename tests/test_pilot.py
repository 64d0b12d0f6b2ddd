"""The pilot technique: a short run on a small slice decides where it can, the fallback where not."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_script
from cli_helpers import run as run_cli

from defcon.catalog import builtin_catalog
from defcon.errors import DefconError
from defcon.measure.pilot import PilotTechnique
from defcon.planning.records import repredicted

pytestmark = pytest.mark.filterwarnings("ignore")


def test_the_pilot_measures_a_known_conflict_on_a_slice(tmp_path) -> None:
    catalog = builtin_catalog()
    pilot = PilotTechnique("digits", cache_dir=tmp_path / "cache")
    result = pilot.run([catalog["model_watermark"], catalog["backdoor_pruning"]])
    assert result.measured_on_slice == "ineffective" and not result.fell_back
    assert result.verdict.technique == "pilot" and result.verdict.label == "ineffective"
    assert "measured ineffective" in result.verdict.explanation and result.seconds > 0


def test_a_pair_that_cannot_train_together_falls_back_without_training(tmp_path) -> None:
    catalog = builtin_catalog()
    pilot = PilotTechnique("digits", cache_dir=tmp_path / "cache")
    result = pilot.run([catalog["certified_watermark"], catalog["dp_sgd"]])
    assert result.fell_back and result.measured_on_slice == "could not run"
    assert not result.verdict.composable
    assert not list((tmp_path / "cache").rglob("*.pt"))


def test_the_pilot_cannot_fall_back_on_itself(tmp_path) -> None:
    with pytest.raises(DefconError, match="fallback"):
        PilotTechnique("digits", cache_dir=tmp_path, fallback="pilot")


def test_cli_pilot_needs_a_dataset_and_the_others_refuse_one(tmp_path) -> None:
    missing = run_cli("check", "model_watermark", "backdoor_pruning", "-t", "pilot")
    assert missing.exit_code == 2 and "give --dataset NAME" in missing.output
    extra = run_cli("check", "model_watermark", "backdoor_pruning", "--dataset", "digits")
    assert extra.exit_code == 2 and "pilot only" in extra.output
    ran = run_cli(
        "check", "model_watermark", "backdoor_pruning", "-t", "pilot", "--dataset", "digits",
        "--cache", str(tmp_path / "cache"), "--json", "-",
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["technique"] == "pilot"


def test_the_benchmark_scores_the_pilot_beside_every_technique(tmp_path, fake_record) -> None:
    script = load_script("pilot")
    record = repredicted(fake_record())  # digits: model_watermark → explanations, effective
    predictions = tmp_path / "predictions.json"
    lines: list[str] = []
    predicted = script.predict_all([record], predictions, str(tmp_path / "cache"), lines.append)
    again = script.predict_all([record], predictions, str(tmp_path / "cache"), lines.append)
    assert again == predicted and "1 already predicted" in lines[-1]  # resumed, not re-run
    text = script.results_markdown([record], predicted)
    assert "| digits | pilot | 1 |" in text and "| digits | factors | 1 |" in text
    assert "## What the pilot read, and what it cost" in text


def test_a_benchmark_script_reports_bad_input_in_one_line_like_the_cli(tmp_path, capsys) -> None:
    from defcon.cli.main import run_script

    script = load_script("pilot")
    with pytest.raises(SystemExit) as exit_info:
        run_script(lambda: script.main([str(tmp_path / "nothing"), "--out", str(tmp_path)]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: no conclusive record under")
    with pytest.raises(SystemExit) as exit_info:
        run_script(lambda: 0)
    assert exit_info.value.code == 0
