"""torchattacks is installed apart from the project (docs/install.md): only what attacks needs it,
and without it those fail before any training with the exact line that installs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run

from defcon.audit.auditor import select_attacks
from defcon.bench.run import run_bench
from defcon.catalog import builtin_catalog
from defcon.engine import optional
from defcon.engine.data import load_dataset
from defcon.errors import DefconError

ROOT = Path(__file__).resolve().parents[1]
INSTALL_LINE = "pip install --no-deps torchattacks==3.5.1"


@pytest.fixture
def without_torchattacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if torchattacks were not installed: importing it raises ImportError."""
    monkeypatch.setitem(sys.modules, "torchattacks", None)


def test_the_project_does_not_declare_torchattacks() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    assert not [r for r in declared if r.lower().startswith("torchattacks")], declared
    assert "--no-deps torchattacks==3.5.1" in (ROOT / "scripts" / "setup.sh").read_text()
    assert optional.INSTALL[optional.TORCHATTACKS] == INSTALL_LINE
    assert INSTALL_LINE in (ROOT / "docs" / "install.md").read_text()


def test_import_and_the_declaration_commands_never_load_torchattacks() -> None:
    script = textwrap.dedent(
        """
        import sys
        import defcon
        from typer.testing import CliRunner
        from defcon.cli.main import app

        runner = CliRunner()
        for args in (
            ["check", "model_watermark", "backdoor_pruning"],
            ["check", "adversarial_training", "dp_sgd"],
            ["plan", "--risks", "evasion,membership_inference"],
            ["show", "adversarial_training"],
            ["list"],
        ):
            result = runner.invoke(app, args)
            assert result.exit_code in (0, 1), (args, result.output)
        print("torchattacks" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_require_names_the_install_line(without_torchattacks: None) -> None:
    with pytest.raises(DefconError, match="pip install --no-deps torchattacks==3.5.1"):
        optional.torchattacks("adversarial_training")
    assert optional.missing_package("json", "anything") is None


def test_compose_refuses_before_training(without_torchattacks: None, tmp_path: Path) -> None:
    result = run(
        "compose", "adversarial_training", "model_watermark", "--dataset", "digits",
        "--profile", "tiny", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    assert_one_line_error(result, "defense 'adversarial_training'", INSTALL_LINE)
    assert not list((tmp_path / "cache").rglob("*.pt")), "nothing was trained"


def test_a_defense_that_needs_no_attack_is_built_without_it(without_torchattacks: None) -> None:
    from defcon.engine.registry import make_defense

    assert make_defense("model_watermark").name == "model_watermark"
    with pytest.raises(DefconError, match=INSTALL_LINE):
        make_defense("adversarial_training")


def test_audit_names_evasion_unmeasured_or_refuses(without_torchattacks: None) -> None:
    digits = load_dataset("digits", seed=0, max_train=50, max_eval=20)
    chosen, skipped = select_attacks(digits, None)
    assert "evasion" not in {a.risk.value for a in chosen}
    assert INSTALL_LINE in skipped["evasion"]
    with pytest.raises(DefconError, match=INSTALL_LINE):
        select_attacks(digits, ["evasion"])


def test_bench_refuses_before_any_pair(without_torchattacks: None, tmp_path: Path) -> None:
    with pytest.raises(DefconError, match=INSTALL_LINE):
        run_bench(
            ["digits"], pairs=[("model_watermark", "dp_sgd"), ("adversarial_training", "dp_sgd")],
            seeds=1, profile="tiny", out=tmp_path, catalog=None,
        )  # fmt: skip
    assert not list(tmp_path.rglob("*.json")), "no pair was measured or recorded as a finding"


def test_the_catalog_declares_what_needs_torchattacks() -> None:
    from defcon.engine.registry import defense_class

    needing = {
        name
        for name, spec in builtin_catalog().items()
        if spec.implementation and optional.TORCHATTACKS in defense_class(spec).requires
    }
    assert needing == {"adversarial_training"}
