"""A bench run names the commit it measured with: clean, +dirty when the source was edited,
none outside a git checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

from defcon.bench.provenance import source_commit


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def test_the_commit_of_the_checkout_and_whether_its_source_was_edited(tmp_path) -> None:
    assert source_commit(tmp_path) is None  # not a checkout
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.org")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "defcon").mkdir()
    (tmp_path / "defcon/a.py").write_text("A = 1\n")
    (tmp_path / "README.md").write_text("docs\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert source_commit(tmp_path) == head
    (tmp_path / "README.md").write_text("docs may differ\n")
    (tmp_path / "defcon/new.py").write_text("untracked = 1\n")
    assert source_commit(tmp_path) == head  # neither docs nor untracked files ran as source
    (tmp_path / "defcon/a.py").write_text("A = 2\n")
    assert source_commit(tmp_path) == f"{head}+dirty"


def test_a_repositorys_fsmonitor_command_is_never_run(tmp_path) -> None:
    """Asking git whether the source changed runs no command the repository's config names."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.org")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "defcon").mkdir()
    (tmp_path / "defcon/a.py").write_text("A = 1\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    marker = tmp_path / "ran"
    git(tmp_path, "config", "core.fsmonitor", f"touch {marker}; false")
    assert source_commit(tmp_path) == git(tmp_path, "rev-parse", "HEAD")
    assert not marker.exists()
