"""Defense settings everywhere: --set NAME.FIELD=VALUE, --settings FILE.toml, `defcon show`."""

from __future__ import annotations

import pytest
from cli_helpers import assert_one_line_error, run

from defcon.engine.defense_settings import defense_settings, parse_assignments, parse_value
from defcon.engine.registry import make_defense
from defcon.errors import DefconError


def test_assignments_parse_toml_values():
    assert parse_value("1.2") == 1.2 and parse_value("true") is True
    assert parse_value("[0, 3]") == [0, 3] and parse_value("top_right") == "top_right"
    parsed = parse_assignments(["dp_sgd.noise_multiplier=1.2", "dp_sgd.max_grad_norm = 2"])
    assert parsed == {"dp_sgd": {"noise_multiplier": 1.2, "max_grad_norm": 2}}
    with pytest.raises(DefconError, match="NAME.FIELD=VALUE"):
        parse_assignments(["dp_sgd=1.2"])


def test_values_are_checked_and_read_by_the_defense_config():
    settings = defense_settings(["threshold_optimizer.sensitive_columns=[0, 3]"], None)
    assert settings == {"threshold_optimizer": {"sensitive_columns": [0, 3]}}
    with pytest.raises(DefconError, match=r"mia_samples \(int\)"):
        defense_settings(["dp_sgd.mia_samples=many"], None)


def test_an_unknown_field_is_one_error_line_listing_the_fields():
    result = run("compose", "dp_sgd", "group_fairness", "--set", "dp_sgd.noise=2")
    assert_one_line_error(
        result, "no setting 'noise'", "noise_multiplier (float | None)", "max_grad_norm (float)"
    )
    result = run("audit", "dp_sgd", "--set", "nonesuch.x=1")
    assert_one_line_error(result, "unknown defense 'nonesuch'", "dp_sgd")
    result = run("bench", "--datasets", "digits", "--set", "dp_sgd.noise_multiplier=loud")
    assert_one_line_error(result, "dp_sgd.noise_multiplier='loud'", "accepted:")
    result = run("check", "dp_sgd", "group_fairness", "--set", "dp_sgd.noise_multiplier=2")
    assert_one_line_error(result, "--technique pilot only")


def test_a_settings_file_is_overridden_by_set(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("[dp_sgd]\nnoise_multiplier = 1.2\nmax_grad_norm = 0.5\n")
    settings = defense_settings(["dp_sgd.max_grad_norm=2.0"], path)
    assert settings == {"dp_sgd": {"noise_multiplier": 1.2, "max_grad_norm": 2.0}}
    path.write_text("dp_sgd = 3\n")
    with pytest.raises(DefconError, match="not a table"):
        defense_settings(None, path)
    path.write_text("[dp_sgd\n")
    assert_one_line_error(run("compose", "dp_sgd", "--settings", str(path)), "not valid TOML")


def test_show_lists_every_setting_with_default_type_and_meaning():
    result = run("show", "dp_sgd")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "noise_multiplier" in line]
    assert lines and "1.0" in lines[0] and "float | None" in lines[0] and "σ" in lines[0]
    assert "mia_samples" in result.stdout and "2000" in result.stdout


def test_the_cache_key_follows_the_settings():
    default = make_defense("dp_sgd").cache_key()
    changed = make_defense("dp_sgd", {"noise_multiplier": 1.2}).cache_key()
    assert default != changed and changed["config"]["noise_multiplier"] == 1.2


def test_compose_echoes_the_settings_in_output_and_record(tmp_path):
    out = tmp_path / "out"
    result = run(
        "compose", "model_watermark", "explanations", "--dataset", "digits", "--seeds", "1",
        "--profile", "tiny", "--out", str(out), "--device", "cpu",
        "--set", "model_watermark.corner=bottom_right",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "settings: model_watermark.corner=bottom_right" in result.stdout
    from defcon.report.reports import load_record

    (path,) = (out / "records").glob("*.json")
    assert load_record(path).configs == {"model_watermark": {"corner": "bottom_right"}}
