"""The `defcon` CLI: list, show, check; JSON output; and every bad-input path ending in one
`error:` line on stderr with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from defcon.cli.main import app

runner = CliRunner()

USER_SPECS = """
[[defense]]
name = "api_trigger_mark"
title = "Watermark planted as a backdoor through a fine-tuning API"
stage = "post"
mitigates = ["model_theft"]
uses = [{ risk = "poisoning", reason = "the mark is a backdoor learnt from trigger queries" }]
[[defense.metrics]]
name = "watermark_accuracy"
direction = "higher"
tolerance = 0.1
"""


def run(*args: str):
    return runner.invoke(app, list(args))


def flat(text: str) -> str:
    """Rich wraps at the terminal width; compare text with whitespace collapsed."""
    return " ".join(text.split())


def catalog_file(tmp_path: Path, text: str = USER_SPECS, name: str = "mine.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_check_explains_the_watermark_pruning_conflict():
    result = run("check", "model_watermark", "backdoor_pruning")
    assert result.exit_code == 0, result.stderr
    out = flat(result.stdout)
    assert "CONFLICT" in out
    assert "model_watermark (pre) uses poisoning — the watermark is a backdoor" in out
    assert "which backdoor_pruning (post) mitigates" in out
    assert "pre-training model_watermark" in out
    assert result.stderr == ""


def test_check_json_prints_one_effective_verdict_with_its_order():
    result = run("check", "dp_sgd", "output_watermark", "explanations", "--json", "-")
    assert result.exit_code == 0
    verdict = json.loads(result.stdout)  # exactly one JSON document, nothing else
    assert verdict["label"] == "effective"
    assert verdict["technique"] == "defcon"
    assert verdict["order"] == ["dp_sgd", "explanations", "output_watermark"]
    assert verdict["conflicts"] == [] and verdict["clashes"] == []


def test_check_json_lists_conflicts():
    verdict = json.loads(run("check", "model_watermark", "backdoor_pruning", "--json", "-").stdout)
    assert verdict["label"] == "ineffective"
    (conflict,) = verdict["conflicts"]
    assert conflict["earlier"] == "model_watermark" and conflict["risk"] == "poisoning"


def test_naive_technique_disagrees():
    result = run("check", "dp_sgd", "adversarial_training", "--technique", "naive", "--json", "-")
    assert json.loads(result.stdout)["label"] == "ineffective"
    assert (
        json.loads(run("check", "dp_sgd", "adversarial_training", "--json", "-").stdout)["label"]
        == "effective"
    )


def test_user_specs_from_a_catalog_file(tmp_path):
    path = catalog_file(tmp_path)
    result = run("check", "api_trigger_mark", "backdoor_pruning", "--catalog", path, "--json", "-")
    assert result.exit_code == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["label"] == "effective"
    assert verdict["stages"]["post"] == ["backdoor_pruning", "api_trigger_mark"]
    both_use = run("check", "model_watermark", "api_trigger_mark", "--catalog", path)
    assert flat(both_use.stdout).startswith("NO CONFLICT")  # both use poisoning; none mitigates it


def test_yaml_catalog_and_structural_clash(tmp_path):
    text = """
defense:
  - name: other_dp
    title: Another privacy wrapper
    stage: in
    mitigates: [membership_inference]
    slots: [privacy_wrapper]
    metrics: [{name: mia_advantage, direction: lower, tolerance: 0.05}]
"""
    path = catalog_file(tmp_path, text, "mine.yaml")
    result = run("check", "dp_sgd", "other_dp", "--catalog", path)
    out = flat(result.stdout)
    assert result.exit_code == 0
    assert out.startswith(
        "CANNOT SHARE A TRAINING LOOP"
    )  # never EFFECTIVE for a pair that cannot train together
    assert "were they composable: effective" in out
    assert "structural clashes" in out
    assert "dp_sgd and other_dp both need the exclusive training-loop slot 'privacy_wrapper'" in out


def test_an_incompatibility_that_is_not_a_slot_clash_is_never_called_effective():
    result = run("check", "certified_watermark", "dp_sgd")
    out = flat(result.stdout)
    assert result.exit_code == 0
    assert out.startswith("CANNOT SHARE A TRAINING LOOP")
    assert "certified_watermark cannot train beside dp_sgd" in out


def test_list_groups_every_defense_by_stage(tmp_path):
    result = run("list", "--catalog", catalog_file(tmp_path))
    assert result.exit_code == 0
    out = result.stdout
    for name in ["model_watermark", "dp_sgd", "backdoor_pruning", "api_trigger_mark"]:
        assert name in out
    first_words = [line.split()[0] for line in out.splitlines() if line[:1].isalpha()]
    assert first_words == ["stage", "pre", "in", "post"]  # the header, then one group per stage
    assert out.index("model_watermark") < out.index("dp_sgd") < out.index("backdoor_pruning")


def test_show_prints_the_whole_spec():
    raw = run("show", "model_watermark").stdout
    (metric_row,) = [line for line in raw.splitlines() if "watermark_accuracy" in line]
    assert "higher" in metric_row and "0.1" in metric_row
    out = flat(raw)
    for fragment in [
        "Backdoor-based model watermark",
        "mitigates model_theft",
        "poisoning: the watermark is a backdoor",
        "image, tabular",
        "model_thief",
        "Adi et al.",
        "mechanism",
    ]:
        assert fragment in out, fragment


def test_show_says_whether_a_mechanism_exists(tmp_path):
    path = catalog_file(tmp_path)
    assert "declaration only" in flat(run("show", "api_trigger_mark", "--catalog", path).stdout)
    with_mechanism = USER_SPECS.replace(
        'stage = "post"', 'stage = "post"\nimplementation = "mine.marks:ApiMark"'
    )
    path = catalog_file(tmp_path, with_mechanism, "other.toml")
    assert "mine.marks:ApiMark" in run("show", "api_trigger_mark", "--catalog", path).stdout


def test_show_json_is_a_reusable_spec():
    spec = json.loads(run("show", "dp_sgd", "--json", "-").stdout)
    assert spec["stage"] == "in" and spec["slots"] == ["privacy_wrapper"]


BAD_FILES = {
    "malformed.toml": "[[defense]\nname = 'x'",
    "contradictory.toml": USER_SPECS.replace(
        'mitigates = ["model_theft"]', 'mitigates = ["model_theft", "poisoning"]'
    ),
    "unknown_risk.toml": USER_SPECS.replace('"model_theft"', '"model_stealing"'),
    "unknown_stage.toml": USER_SPECS.replace('stage = "post"', 'stage = "after"'),
    "clone.toml": USER_SPECS.replace('"api_trigger_mark"', '"dp_sgd"'),
    "bad.json": '{"defense": [',
    "notes.txt": "hello",
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "model_watermak", "backdoor_pruning"], "Did you mean 'model_watermark'"),
        (["check", "dp_sgd", "dp_sgd"], "named twice"),
        (["check", "dp_sgd"], "at least 2 defenses, got 1"),
        (["check"], "at least 2 defenses, got 0"),
        (["check", "dp_sgd", "explanations", "--technique", "navie"], "Did you mean 'naive'"),
        (["check", "dp_sgd", "explanations", "--catalog", "/no/such.toml"], "does not exist"),
        (["check", "dp_sgd", "explanations", "--bogus"], "No such option"),
        (["check", "dp_sgd", "explanations", "--catalog"], "requires an argument"),
        (["show", "dp_sdg"], "unknown defense 'dp_sdg'"),
        (["show"], "Missing argument"),
        (["list", "--catalog", "/no/such.yaml"], "does not exist"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(args, message):
    result = run(*args)
    _assert_one_error_line(result.exit_code, result.stdout, result.stderr, message)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("malformed.toml", "malformed"),
        ("contradictory.toml", "both uses and mitigates poisoning"),
        ("unknown_risk.toml", "'model_stealing' is not accepted"),
        ("unknown_stage.toml", "'after' is not accepted"),
        ("clone.toml", "'dp_sgd' is declared twice"),
        ("bad.json", "malformed"),
        ("notes.txt", "suffix '.txt'"),
    ],
)
def test_bad_catalog_files_are_one_error_line_and_exit_2(tmp_path, name, message):
    path = catalog_file(tmp_path, BAD_FILES[name], name)
    for command in (["check", "dp_sgd", "explanations"], ["list"]):
        result = run(*command, "--catalog", path)
        _assert_one_error_line(result.exit_code, result.stdout, result.stderr, message)


def _assert_one_error_line(code: int, stdout: str, stderr: str, message: str) -> None:
    assert code == 2
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in stderr


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("list", "show", "check"):
        assert command in result.stdout


DEFCON = Path(sys.executable).with_name("defcon")


@pytest.mark.skipif(not DEFCON.exists(), reason="the defcon console script is not installed")
def test_installed_console_script():
    ok = subprocess.run(
        [str(DEFCON), "check", "model_watermark", "backdoor_pruning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "which backdoor_pruning (post) mitigates" in flat(ok.stdout)
    bad = subprocess.run(
        [str(DEFCON), "check", "dp_sgd"], capture_output=True, text=True, timeout=60
    )
    _assert_one_error_line(bad.returncode, bad.stdout, bad.stderr, "at least 2 defenses")


def test_check_never_imports_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from defcon.cli.main import app\n"
        "result = CliRunner().invoke(app, ['check', 'dp_sgd', 'explanations', 'model_watermark'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = sorted(m for m in ('torch', 'opacus', 'captum') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_json_convention_is_one_path_everywhere(tmp_path: Path) -> None:
    """--json PATH writes the file and still prints the table; --json - prints JSON only."""
    target = tmp_path / "verdict.json"
    result = run("check", "model_watermark", "backdoor_pruning", "--json", str(target))
    assert result.exit_code == 0
    assert "CONFLICT" in result.stdout
    assert json.loads(target.read_text())["label"] == "ineffective"
    spec_file = tmp_path / "spec.json"
    assert run("show", "dp_sgd", "--json", str(spec_file)).exit_code == 0
    assert json.loads(spec_file.read_text())["name"] == "dp_sgd"
    assert json.loads(run("show", "dp_sgd", "--json", "-").stdout)["name"] == "dp_sgd"


def test_a_conflict_comes_with_conflict_free_alternatives_for_the_same_risks():
    result = run("check", "model_watermark", "backdoor_pruning")
    assert result.exit_code == 0
    out = result.stdout
    assert "conflict-free alternatives for model_theft, poisoning:" in out
    tail = out.split("conflict-free alternatives", 1)[1]
    assert "backdoor_pruning → model_watermark" not in tail and "→" in tail
