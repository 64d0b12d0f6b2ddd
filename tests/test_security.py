"""Fail safe, round two (issue 20, part A): one test per class. The probes themselves, as a
hostile or careless user would run them, are in test_probes_security.py (slow)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defcon.catalog import Catalog, builtin_catalog, parse_specs
from defcon.measure.cache import ModelCache
from defcon.plugins import load_object

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "benchmarks" / "results" / "records"


# --------------------------------------------------------------------------- 1: links


def test_no_write_of_the_cache_goes_through_a_link(tmp_path: Path) -> None:
    """An entry, its lock and its folder planted as links: each is replaced by a regular
    file/folder with a warning; what they pointed at is never written."""
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "cache"
    warnings: list[str] = []
    cache = ModelCache(root, warn=warnings.append)
    description = {"probe": 1}
    from defcon.measure.cache import content_key

    key = content_key(description)
    entry = root / "measurements" / key[:2] / f"{key}.json"
    entry.parent.mkdir(parents=True)
    entry.symlink_to(victim)
    (root / "locks").mkdir()
    (root / "locks" / f"{key}.lock").symlink_to(victim)
    assert cache.measurement(description, lambda: {"m": 0.5}) == {"m": 0.5}
    assert victim.read_text() == "root:x:0:0\n"
    assert not entry.is_symlink() and json.loads(entry.read_text())["metrics"] == {"m": 0.5}
    assert any("symbolic link" in w for w in warnings)
    # a folder inside the cache that is a link is replaced too, never written into
    other = {"probe": 2}
    key2 = content_key(other)
    (root / "measurements" / key2[:2]).symlink_to(elsewhere, target_is_directory=True)
    cache.measurement(other, lambda: {"m": 1.0})
    assert list(elsewhere.iterdir()) == []
    assert not (root / "measurements" / key2[:2]).is_symlink()
    assert ModelCache(root).measurement(other, lambda: {"m": 9.0}) == {"m": 1.0}  # reused


# --------------------------------------------------------------------------- 2: plug-ins


PLUGIN = """\
import helper_mod
import tomli_w
from pkgx.inner import VALUE
def build(shape, classes):
    return helper_mod.SCALE + VALUE
"""


def _plugin_folder(folder: Path) -> None:
    (folder / "plugin_mod.py").write_text(PLUGIN)
    (folder / "helper_mod.py").write_text("SCALE = 2\n")
    (folder / "never_imported.py").write_text("")
    (folder / "pkgx").mkdir()
    (folder / "pkgx" / "__init__.py").write_text("")
    (folder / "pkgx" / "inner.py").write_text("from . import leaf\nVALUE = leaf.X\n")
    (folder / "pkgx" / "leaf.py").write_text("X = 40\n")
    # a file named like an installed library (as ./opacus.py; a light one keeps this fast)
    (folder / "tomli_w.py").write_text("open('MARKER', 'w').write('ran')\n")


def test_a_plug_in_loads_from_its_folder_and_leaves_nothing_importable(tmp_path: Path) -> None:
    """Sibling and relative imports work during the plug-in's import; afterwards sys.path is as
    it was and a file shadowing an installed library never ran (a fresh interpreter without the working folder on
    its path, as the `defcon` command runs)."""
    _plugin_folder(tmp_path)
    script = (
        "import sys; before = list(sys.path)\n"
        "from defcon.plugins import load_object\n"
        "print(load_object('plugin_mod:build', '--model')((1,), 2))\n"
        "assert sys.path == before, (before, sys.path)\n"
        "import importlib.util; assert importlib.util.find_spec('never_imported') is None\n"
        "import tomli_w; print(tomli_w.__file__)\n"
    )
    done = subprocess.run([sys.executable, "-P", "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.split()
    assert first == "42" and "site-packages" in second
    assert not (tmp_path / "MARKER").exists()


# --------------------------------------------------------------------------- 3: terminal


def test_control_characters_never_reach_the_terminal(tmp_path: Path) -> None:
    from cli_helpers import run

    from defcon.terminal import printable

    assert printable("a\x1b[2Jb\x1b]0;t\x07c\x9bd\u202ee\n\t") == (
        "a\\x1b[2Jb\\x1b]0;t\\x07c\\x9bd\\u202ee\n\t"
    )
    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[32mEFFECTIVE\x1b[0m"
    catalog = tmp_path / "evil.json"
    spec = dict(builtin_catalog()["dp_sgd"].model_dump(mode="json"), name="evil_def",
                title=evil, implementation=None)  # fmt: skip
    catalog.write_text(json.dumps({"defense": [spec]}))
    for args in (("show", "evil_def", "--catalog", str(catalog)),
                 ("list", "--catalog", str(catalog)),
                 ("show", f"no{evil}", "--catalog", str(catalog))):  # fmt: skip
        result = run(*args)
        assert "\x1b" not in result.stdout + result.stderr, args
        if args[0] == "show":  # the title or the unknown name, shown escaped
            assert "\\x1b" in result.stdout + result.stderr, args
    record = json.loads(next(RECORDS.rglob("*.json")).read_text())
    record["dataset"] = evil
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record))
    result = run("report", str(path))
    assert (
        result.exit_code == 0 and "\x1b" not in result.stdout and "\\x1b]0;pwned" in result.stdout
    )


# --------------------------------------------------------------------------- 4: stale cache


def test_a_plug_in_s_code_hash_covers_every_module_of_its_folder_it_uses(tmp_path, monkeypatch):
    from defcon.engine.fingerprint import _plugin_code, plugin_code

    _plugin_folder(tmp_path)
    (tmp_path / "unrelated.py").write_text("Y = 1\n")
    (tmp_path / "plugin_mod.py").write_text(PLUGIN + "def later():\n    import late_mod\n")
    (tmp_path / "late_mod.py").write_text("Z = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        load_object("plugin_mod:build", "--model")

        def code() -> str:
            _plugin_code.cache_clear()
            return plugin_code("plugin_mod")

        first = code()
        (tmp_path / "unrelated.py").write_text("Y = 2\n")
        (tmp_path / "tomli_w.py").write_text("# shadows an installed library: not the plug-in's\n")
        assert code() == first
        for helper in ("helper_mod.py", "pkgx/leaf.py", "late_mod.py"):
            before = code()
            (tmp_path / helper).write_text((tmp_path / helper).read_text() + "# edited\n")
            assert code() != before, helper
    finally:
        for name in ("plugin_mod", "helper_mod", "pkgx", "pkgx.inner", "pkgx.leaf"):
            sys.modules.pop(name, None)


# --------------------------------------------------------------------------- 5: record names


def test_a_bench_record_name_carries_everything_the_task_depends_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from defcon.bench.run import task_identity

    builtin = builtin_catalog()
    names = ("dp_sgd", "explanations")
    assert task_identity("digits", names, builtin, None, {}) == ""  # committed names unchanged
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,y,s\n1,2,0,0\n")
    base = {"target": "y", "sensitive": None, "kind": None}
    first = task_identity(str(csv), names, builtin, None, base)
    assert first and first == task_identity(str(csv), names, builtin, None, base)
    assert task_identity(str(csv), names, builtin, None, {**base, "target": "s"}) != first
    assert task_identity(str(csv), names, builtin, None, {**base, "sensitive": "s"}) != first
    csv.write_text("a,b,y,s\n1,3,0,0\n")
    assert task_identity(str(csv), names, builtin, None, base) != first
    # two implementations under one user defense name never share a record
    spec = builtin["poison_filter"].model_dump(mode="json")
    ids = set()
    # a second mechanism with the same metrics (the conformance check refuses any other)
    (tmp_path / "other_filter.py").write_text(
        "from pipeline_stages.pre_training.poison_filter import PoisonFilter\n\n\n"
        "class OtherFilter(PoisonFilter):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    for implementation in (
        "pipeline_stages.pre_training.poison_filter:PoisonFilter",
        "other_filter:OtherFilter",
    ):
        if load_object(implementation, "x") is None:  # pragma: no cover
            continue
        user = parse_specs(
            {"defense": [{**spec, "name": "mine", "implementation": implementation}]}, "t"
        )
        catalog = Catalog([*builtin.values(), *user])
        ids.add(task_identity("digits", ("mine", "dp_sgd"), catalog, None, {}))
    assert len(ids) == 2 and "" not in ids


# --------------------------------------------------------------------------- 6: folders


def test_a_bench_folder_never_breaks_on_a_record_it_cannot_use(tmp_path: Path) -> None:
    from defcon.bench.run import load_records

    assert "nope" not in builtin_catalog()  # `in` answers; it used to raise "unknown defense"
    committed = sorted(RECORDS.rglob("*.json"))[:2]
    assert committed and all("schema_version" not in p.read_text() for p in committed)
    for path in committed:
        shutil.copy(path, tmp_path / path.name)
    record = json.loads(committed[0].read_text())
    (tmp_path / "newer.json").write_text(json.dumps({**record, "schema_version": 99}))
    unknown = {**record, "defenses": ["centroid_filter", *record["defenses"][1:]]}
    (tmp_path / "user.json").write_text(json.dumps(unknown))
    warnings: list[str] = []
    loaded = load_records(tmp_path, warnings.append)
    assert len(loaded) == 2 and {r.schema_version for r in loaded} == {1}  # old records: v1
    assert len(warnings) == 2
    assert any("newer.json" in w and "schema version 99" in w for w in warnings)
    assert any("user.json" in w and "centroid_filter" in w for w in warnings)


# --------------------------------------------------------------------------- 7: signals


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def bench_then_signal(out: Path, signum: int) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Start `defcon bench --workers 2`, send `signum` to its main process once its workers are
    up; return the finished process and the pids of the workers (and resource tracker)."""
    pairs = "model_watermark+explanations,backdoor_pruning+explanations,model_watermark+backdoor_pruning"
    command = [str(Path(sys.executable).parent / "defcon"), "bench", "--datasets", "digits",
               "--pairs", pairs, "--profile", "tiny", "--seeds", "1", "--workers", "2",
               "--out", str(out)]  # fmt: skip
    env = dict(os.environ, DEFCON_PROGRESS="0", OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while len(_children(process.pid)) < 3:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no workers started"
        time.sleep(0.2)
    children = _children(process.pid)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), children


def _alive(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + 15
    while True:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                 and (Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z")]  # fmt: skip
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_a_bench_leaves_no_process_behind(tmp_path: Path) -> None:
    done, children = bench_then_signal(tmp_path / "b", signal.SIGTERM)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    lines = done.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("error: bench stopped by SIGTERM") and "Traceback" not in done.stderr
    )
    assert _alive(children) == []
