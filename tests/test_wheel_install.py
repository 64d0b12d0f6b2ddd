"""The built wheel, installed as a pip user would (docs/install.md), into a fresh virtual
environment that already holds their torch and a current requests: nothing they had is replaced
or downgraded, `defcon check` and a digits composition run without torchattacks, and
adversarial_training runs once torchattacks is installed with --no-deps.

Slow (a fresh environment, the project's dependencies from pip's cache, three CLI runs);
scripts/check_wheel.sh runs it in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
USER_TORCH = "torch==2.13.0"  # the CPU build on this machine's disk (ENVIRONMENT.md)
INSTALL_LINE = "pip install --no-deps torchattacks==3.5.1"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@dataclass
class Venv:
    """A fresh environment with the user's packages, then the wheel."""

    root: Path
    work: Path  # the folder the CLI runs in (its defcon-runs/ lands here)
    before: dict[str, str]  # package → version before the wheel was installed
    after: dict[str, str]  # and after

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        done = subprocess.run(
            [str(a) for a in args], cwd=self.work, env=env, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        if check:
            assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done

    def pip(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-m", "pip", "--disable-pip-version-check", *args)

    def packages(self) -> dict[str, str]:
        listed = json.loads(self.pip("list", "--format=json").stdout)
        return {p["name"].lower(): p["version"] for p in listed}

    def defcon(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(self.root / "bin" / "defcon", *args, check=check)


def changed(before: dict[str, str], after: dict[str, str]) -> dict[str, str]:
    """Packages installed before whose version is no longer the same."""
    return {
        name: f"{version} → {after.get(name, 'removed')}"
        for name, version in before.items()
        if after.get(name) != version
    }


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
         str(ROOT), "-w", str(tmp / "dist")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("defcon-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    (tmp / "work").mkdir()
    env = Venv(tmp / "venv", tmp / "work", {}, {})
    env.pip("install", "--quiet", USER_TORCH, "requests")  # what the user already had
    env.before = env.packages()
    env.pip("install", "--quiet", wheel)
    env.after = env.packages()
    return env


def test_the_wheel_replaces_and_downgrades_nothing(venv: Venv) -> None:
    assert Version(venv.before["torch"]).base_version == "2.13.0"
    assert Version(venv.before["requests"]) > Version("2.25.1")
    assert not changed(venv.before, venv.after)
    assert "torchattacks" not in venv.after and "torchvision" not in venv.after
    where = venv.run(venv.python, "-c", "import defcon; print(defcon.__file__)").stdout
    assert str(venv.root) in where, "defcon comes from the wheel, not the checkout"


def test_check_and_compose_without_torchattacks(venv: Venv) -> None:
    checked = venv.defcon("check", "model_watermark", "backdoor_pruning")
    assert "order" in checked.stdout
    venv.defcon(
        "compose", "model_watermark", "dp_sgd", "--dataset", "digits", "--profile", "tiny",
        "--seeds", "1",
    )  # fmt: skip
    (record,) = (venv.work / "defcon-runs" / "records").glob("*model_watermark+dp_sgd*.json")
    assert json.loads(record.read_text())["versions"]["torchattacks"] == "not installed"
    refused = venv.defcon(
        "compose", "adversarial_training", "model_watermark", "--dataset", "digits",
        "--profile", "tiny", "--seeds", "1", check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
    assert INSTALL_LINE in lines[0]


def test_adversarial_training_after_the_no_deps_line(venv: Venv) -> None:
    venv.pip("install", "--quiet", "--no-deps", "torchattacks==3.5.1")
    assert not changed(venv.after, venv.packages())
    venv.defcon(
        "compose", "adversarial_training", "model_watermark", "--dataset", "digits",
        "--profile", "tiny", "--seeds", "1",
    )  # fmt: skip
    (record,) = (venv.work / "defcon-runs" / "records").glob("*adversarial_training*.json")
    result = json.loads(record.read_text())
    assert result["versions"]["torchattacks"] == "3.5.1"
    assert {r["defense"] for r in result["results"]} == {"adversarial_training", "model_watermark"}
