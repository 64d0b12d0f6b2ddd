"""The README stays a front door: short, its links resolve, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from defcon.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 250, "long material belongs in docs/"


def test_every_local_link_resolves() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local, "the README links its docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_every_defcon_command_in_the_readme_exists() -> None:
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    shell = "\n".join(re.findall(r"```bash\n(.*?)```", README, re.S))
    used = set(re.findall(r"(?m)(?:^|\.venv/bin/)defcon ([a-z]+)", shell))
    assert used, "the README shows commands"
    assert used <= commands, used - commands


def test_the_two_fresh_machine_commands_are_there() -> None:
    assert "bash scripts/setup.sh && .venv/bin/defcon compose" in README
    assert "bash scripts/test.sh" in README
