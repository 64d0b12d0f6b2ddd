"""Shared helpers of the CLI tests: run the app in-process, check the one-line error contract."""

from __future__ import annotations

from typer.testing import CliRunner

from defcon.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit code 2, exactly one stderr line starting with 'error: ', naming each fragment."""
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
