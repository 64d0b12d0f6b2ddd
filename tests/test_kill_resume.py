"""SIGKILL in the middle of compose and bench, then resume: nothing half-written, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent.parent


def _defcon(*args: str) -> list[str]:
    return [sys.executable, "-c", "from defcon.cli.main import app; app()", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ, DEFCON_PROGRESS="0", PYTHONPATH=str(ROOT))
    env.pop("PYTHONWARNINGS", None)
    return env


def _kill_when(command: list[str], ready, timeout: float = 300.0) -> None:
    """Start `command`, SIGKILL it as soon as `ready()` is true (fail if it ends first)."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline, "nothing was written in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


def test_compose_resumes_after_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = _defcon(
        "compose", "model_watermark", "explanations", "--dataset", "digits", "--profile", "tiny",
        "--seeds", "3", "--out", str(out), "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    _kill_when(args, lambda: len(list((out / "cache" / "models").rglob("*.json"))) >= 1)
    kept = {p.name for p in (out / "cache" / "models").rglob("*.pt")}
    assert kept and not (tmp_path / "r.json").exists()
    done = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "r.json").is_file()
    assert not list(out.rglob("*.tmp"))  # no half-written file survived the kill
    import json

    record = json.loads((tmp_path / "r.json").read_text())
    assert record["cache"]["models_reused"] >= len(kept)  # what was finished was not redone


def test_bench_resumes_after_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    pairs = "model_watermark+explanations,backdoor_pruning+explanations,model_watermark+backdoor_pruning"
    args = _defcon(
        "bench", "--datasets", "digits", "--pairs", pairs, "--profile", "tiny", "--seeds", "1",
        "--out", str(out),
    )  # fmt: skip
    _kill_when(args, lambda: len(list((out / "records").rglob("*.json"))) >= 1)
    finished = {p.name for p in (out / "records").rglob("*.json")}
    assert 1 <= len(finished) < 3
    done = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{len(finished)} already measured" in " ".join(done.stderr.split())
    assert len(list((out / "records").rglob("*.json"))) == 3
    assert not list(out.rglob("*.tmp"))
    assert (out / "RESULTS.md").is_file()
