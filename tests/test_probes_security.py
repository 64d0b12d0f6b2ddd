"""The probes of issue 20 (part A), run as a hostile or careless user would run them: the `defcon`
command in a folder of the user's own. Slow (each trains models); rerun them with
`pytest -m slow tests/test_probes_security.py`. The fast tests of each class are in
test_security.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_bring_your_own import _readme_files, write_loans
from test_security import RECORDS, _alive, bench_then_signal

from defcon.catalog import builtin_catalog

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

DEFCON = str(Path(sys.executable).parent / "defcon")  # as a user runs it: no cwd on sys.path
ESC = "\x1b]0;pwned\x07\x1b[2J\x1b[32mEFFECTIVE\x1b[0m"
MARKER_CODE = "open('MARKER', 'w').write('ran')\n"


def defcon(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEFCON_PROGRESS="0", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run([DEFCON, *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """The README's plug-ins (catalog, defense module, model factory) and a CSV, plus files
    named like installed libraries that must never run."""
    for name, text in _readme_files().items():
        (tmp_path / name).write_text(text)
    write_loans(tmp_path / "loans.csv")
    for shadow in ("opacus.py", "fairlearn.py", "captum.py", "torchattacks.py"):
        (tmp_path / shadow).write_text(MARKER_CODE)
    return tmp_path


USER = ["--catalog", "my_defenses.toml", "--dataset", "loans.csv", "--target", "approved",
        "--sensitive", "sex", "--profile", "tiny", "--seeds", "1"]  # fmt: skip


def test_probe_no_code_runs_from_the_working_folder(user_folder: Path) -> None:
    """check, compose and audit with a user catalog and `--model`: ./opacus.py never runs."""
    runs = [
        defcon(user_folder, "check", "centroid_filter", "dp_sgd", "--catalog", "my_defenses.toml"),
        defcon(user_folder, "compose", "centroid_filter", "dp_sgd", *USER, "--model",
               "my_model:build", "--out", "runs"),
        defcon(user_folder, "audit", "dp_sgd", "--dataset", "loans.csv", "--target", "approved",
               "--sensitive", "sex", "--profile", "tiny", "--seeds", "1", "--model",
               "my_model:build", "--out", "runs"),
    ]  # fmt: skip
    for done in runs:
        assert done.returncode == 0, done.stderr
    assert not (user_folder / "MARKER").exists()


def test_probe_the_cache_never_writes_through_a_link(user_folder: Path) -> None:
    """Every model and measurement entry replaced by a link to a stand-in for /etc/passwd: the
    rerun warns, recomputes, writes regular files; the stand-in is untouched."""
    args = ["compose", "model_watermark", "explanations", "--dataset", "digits", "--profile",
            "tiny", "--seeds", "1", "--out", "runs"]  # fmt: skip
    assert defcon(user_folder, *args).returncode == 0
    victim = user_folder / "passwd"
    victim.write_text("root:x:0:0:root:/root:/bin/bash\n")
    entries = [p for p in (user_folder / "runs" / "cache").rglob("*")
               if p.is_file() and p.suffix in (".pt", ".json")]  # fmt: skip
    assert entries
    for entry in entries:
        entry.unlink()
        entry.symlink_to(victim)
    done = defcon(user_folder, *args)
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    assert not any(entry.is_symlink() for entry in entries)
    assert "symbolic link" in done.stderr


def test_probe_escape_sequences_never_reach_the_terminal(user_folder: Path) -> None:
    """A record, a catalog title and a CSV header carrying escape sequences: report, show, list
    and the error line show them escaped."""
    record = json.loads(next(RECORDS.rglob("*.json")).read_text())
    (user_folder / "evil.json").write_text(json.dumps({**record, "dataset": ESC}))
    spec = dict(builtin_catalog()["dp_sgd"].model_dump(mode="json"), name="evil_def", title=ESC,
                implementation=None)  # fmt: skip
    (user_folder / "evil_catalog.json").write_text(json.dumps({"defense": [spec]}))
    header = f"age,income{ESC},approved\n1,2,yes\n3,4,no\n"
    (user_folder / "evil.csv").write_text(header)
    runs = [
        defcon(user_folder, "report", "evil.json"),
        defcon(user_folder, "list", "--catalog", "evil_catalog.json"),
        defcon(user_folder, "show", "evil_def", "--catalog", "evil_catalog.json"),
        defcon(user_folder, "show", f"x{ESC}"),
        defcon(user_folder, "compose", "dp_sgd", "explanations", "--dataset", "evil.csv",
               "--target", f"nope{ESC}", "--profile", "tiny", "--seeds", "1", "--out", "o"),
    ]  # fmt: skip
    for done in runs:
        assert "\x1b" not in done.stdout + done.stderr, done.args
    assert "\\x1b" in runs[0].stdout and "\\x1b" in runs[2].stdout
    for done in runs[3:]:
        assert done.returncode == 2 and done.stderr.startswith("error: "), done.stderr


def test_probe_editing_a_factory_s_helper_retrains(user_folder: Path) -> None:
    """The factory imports its width from a helper; editing only the helper is a new model."""
    (user_folder / "net_helper.py").write_text("WIDTH = 16\n")
    (user_folder / "net.py").write_text(
        "from torch import nn\nimport net_helper\n\n"
        "def build(shape, classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0], net_helper.WIDTH), nn.ReLU(),"
        " nn.Linear(net_helper.WIDTH, classes))\n"
    )
    args = ["compose", "model_watermark", "explanations", "--dataset", "loans.csv", "--target",
            "approved", "--profile", "tiny", "--seeds", "1", "--model", "net:build", "--out",
            "runs", "--json", "r.json"]  # fmt: skip
    assert defcon(user_folder, *args).returncode == 0
    again = defcon(user_folder, *args)
    assert again.returncode == 0
    assert json.loads((user_folder / "r.json").read_text())["cache"]["models_trained"] == 0
    (user_folder / "net_helper.py").write_text("WIDTH = 8\n")
    assert defcon(user_folder, *args).returncode == 0
    assert json.loads((user_folder / "r.json").read_text())["cache"]["models_trained"] > 0


def test_probe_a_user_catalog_bench_folder_stays_usable(user_folder: Path) -> None:
    """A bench with a user-catalog defense writes its summary; the same CSV with another
    --target is not 'already measured'; a later run without the catalog, and a record of a newer
    schema, are skipped with a warning instead of breaking the folder."""
    bench = ["bench", "--pairs", "centroid_filter+dp_sgd", "--datasets", "loans.csv",
             "--target", "approved", "--sensitive", "sex", "--profile", "tiny", "--seeds", "1",
             "--out", "b"]  # fmt: skip
    done = defcon(user_folder, *bench, "--catalog", "my_defenses.toml")
    assert done.returncode == 0, done.stderr
    assert (user_folder / "b" / "RESULTS.md").is_file()
    other = [*bench[:6], "sex", *bench[9:]]  # --target sex, no --sensitive
    done = defcon(user_folder, *other, "--catalog", "my_defenses.toml", "--report-only")
    assert done.returncode == 0, done.stderr
    assert "0 combinations measured" in " ".join(done.stderr.split())
    record = next((user_folder / "b" / "records").rglob("*.json"))
    newer = json.loads(record.read_text())
    (record.parent / "newer.json").write_text(json.dumps({**newer, "schema_version": 7}))
    done = defcon(user_folder, "bench", "--pairs", "dp_sgd+explanations", "--datasets", "digits",
                  "--profile", "tiny", "--seeds", "1", "--out", "b", "--report-only")  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stderr.split())
    assert "centroid_filter that the catalog does not declare" in text
    assert "schema version 7" in text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_probe_sigint_stops_the_bench_queue(tmp_path: Path) -> None:
    done, children = bench_then_signal(tmp_path / "b", signal.SIGINT)
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: bench stopped by SIGINT")
    assert _alive(children) == []
    records = list((tmp_path / "b" / "records").rglob("*.json"))
    assert len(records) < 3  # the queue stopped: not every combination ran
