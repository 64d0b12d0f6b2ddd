"""Which commit of defcon measured a bench run, so its records can be traced to code.

Records carry a hash of the code that trained and measured them (the cache key's); a run's entry
in OUT/runs.json also names the git commit of the checkout it ran from, with `+dirty` when its
tracked source differed from that commit. An installed copy (no checkout) records none.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import defcon

SOURCE_FOLDERS = ("defcon", "pipeline_stages")  # what trains and measures; docs may differ


def source_commit(root: Path | None = None, paths: tuple[str, ...] = SOURCE_FOLDERS) -> str | None:
    """The checkout's HEAD commit (+dirty if a tracked file under `paths` is modified; "." for
    the whole tree), or None where defcon does not run from a git checkout or git is not
    installed."""
    root = Path(defcon.__file__).resolve().parent.parent if root is None else root
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                [git, *args], cwd=root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if not commit:
        return None
    # read-only, and no hook or fsmonitor command a repository's config names may run
    changed = run(
        "-c", "core.fsmonitor=false", "status", "--porcelain", "--untracked-files=no",
        "--", *paths,
    )  # fmt: skip
    return f"{commit}+dirty" if changed else commit
