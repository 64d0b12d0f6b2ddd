"""Fail safe (issue 13) on the command line: one `error:` line (exit 2) for every bad file or
path, refused before any training; --version, -h, datasets, report; and a fuzz test."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run, runner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defcon.cli.main import app

pytestmark = pytest.mark.filterwarnings("ignore")
PAIR = ["model_watermark", "explanations"]


def nothing_trained(folder: Path) -> bool:
    return not list(folder.rglob("*.pt")) and not list(folder.rglob("records/*.json"))


# --------------------------------------------------------------------------- item 1


def test_compose_refuses_a_directory_as_json_before_training(tmp_path: Path) -> None:
    target = tmp_path / "somewhere"
    target.mkdir()
    result = run("compose", *PAIR, "--profile", "tiny", "--seeds", "1", "--out",
                 str(tmp_path / "o"), "--json", str(target))  # fmt: skip
    assert_one_line_error(result, "--json", str(target), "a directory")
    assert target.is_dir() and nothing_trained(tmp_path)


def test_compose_refuses_a_fifo_or_device_as_json_and_leaves_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/null"), "a device")):
        result = run("compose", *PAIR, "--profile", "tiny", "--out", str(tmp_path / "o"),
                     "--json", str(path))  # fmt: skip
        assert_one_line_error(result, str(path), kind)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert nothing_trained(tmp_path)


# --------------------------------------------------------------------------- item 6


def test_a_non_utf8_catalog_or_triples_file_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[[defense]]\nname = "\xff\xfe"\n')
    assert_one_line_error(run("check", *PAIR, "--catalog", str(bad)), "bad.toml", "not UTF-8")
    assert_one_line_error(run("list", "--catalog", str(bad)), "not UTF-8")
    result = run("bench", "--datasets", "digits", "--triples", str(bad), "--out", str(tmp_path))
    assert_one_line_error(result, "triples file", "not UTF-8")


def test_a_directory_as_catalog_says_it_is_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "specs.toml"
    folder.mkdir()
    result = run("check", *PAIR, "--catalog", str(folder))
    assert_one_line_error(result, "is a directory")
    assert "does not exist" not in result.stderr


def test_a_cache_under_a_regular_file_is_refused_up_front(tmp_path: Path) -> None:
    blocker = tmp_path / "hostname"
    blocker.write_text("x")
    for command in (["compose", *PAIR, "--profile", "tiny"], ["bench", "--datasets", "digits"]):
        result = run(*command, "--out", str(tmp_path / "o"), "--cache", str(blocker / "c"))
        assert_one_line_error(result, "--cache", str(blocker / "c"), "not a writable folder")
    assert nothing_trained(tmp_path)


def test_random_idx_files_in_data_dir_are_one_error_naming_the_file(tmp_path: Path) -> None:
    from defcon.engine.data import FMNIST_FILES

    data = tmp_path / "fm"
    data.mkdir()
    for stem in FMNIST_FILES.values():
        (data / stem).write_bytes(os.urandom(2048))
    result = run("compose", *PAIR, "--dataset", "fmnist", "--profile", "tiny", "--data-dir",
                 str(data), "--out", str(tmp_path / "o"))  # fmt: skip
    assert_one_line_error(result, "is not a valid IDX file", "-ubyte")


def test_an_os_error_while_writing_is_one_error_naming_the_path(tmp_path, monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "/somewhere/out.png")

    monkeypatch.setattr("defcon.cli.views.catalog_table", full)
    assert_one_line_error(run("list"), "/somewhere/out.png", "No space left on device")


# --------------------------------------------------------------------------- item 11


def test_version_and_short_help() -> None:
    from defcon import __version__

    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"defcon {__version__}"
    for args in (["-h"], ["compose", "-h"], ["bench", "-h"]):
        result = run(*args)
        assert result.exit_code == 0 and "Usage" in result.stdout, args


def test_datasets_lists_every_dataset_and_how_to_bring_fmnist() -> None:
    result = run("datasets")
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    for fragment in ("digits", "fmnist", "adult", "compas", "tabular", "sex", "race",
                     "--data-dir", "DEFCON_FMNIST_DIR", "train-images-idx3-ubyte"):  # fmt: skip
        assert fragment in text, fragment
    listed = json.loads(run("datasets", "--json", "-").stdout)
    assert [(d["name"], d["kind"], d["classes"]) for d in listed] == [
        ("digits", "image", 10), ("fmnist", "image", 10), ("adult", "tabular", 2),
        ("compas", "tabular", 2),
    ]  # fmt: skip


def test_report_prints_a_past_record_and_refuses_bad_files(tmp_path: Path, fake_record) -> None:
    from defcon.report.reports import save_record

    path = save_record(fake_record(), tmp_path / "r.json")
    result = run("report", str(path))
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "model_watermark → explanations on digits" in text and "Measured: effective" in text
    assert_one_line_error(run("report", str(tmp_path / "missing.json")), "does not exist")
    (tmp_path / "bad.json").write_text('{"defenses": ')
    assert_one_line_error(run("report", str(tmp_path / "bad.json")), "not a defcon composition")
    (tmp_path / "bin.json").write_bytes(b"\x89PNG\xff")
    assert_one_line_error(run("report", str(tmp_path / "bin.json")), "not UTF-8")
    assert_one_line_error(run("report", str(tmp_path)), "is a directory")


def test_help_texts_say_what_is_supported() -> None:
    bench = " ".join(run("bench", "--help").stdout.split())
    assert "[[triple]]" in bench
    compose = " ".join(run("compose", "--help").stdout.split())
    assert "Two or more defenses" in compose and "Two or three" not in compose


@pytest.mark.parametrize("command", [["compose", *PAIR], ["bench", "--datasets", "digits"]])
def test_many_seeds_warn_about_the_cost(tmp_path: Path, command: list[str]) -> None:
    result = run(*command, "--seeds", "25", "--profile", "nope", "--out", str(tmp_path))
    assert result.exit_code == 2
    warning, error = result.stderr.strip().splitlines()
    assert warning.startswith("warning: 25 seeds") and error.startswith("error: unknown profile")
    quiet = run(*command, "--seeds", "3", "--profile", "nope", "--out", str(tmp_path))
    assert "warning" not in quiet.stderr


# --------------------------------------------------------------------------- fuzz

_WORK = Path(tempfile.mkdtemp(prefix="defcon-fuzz-"))
atexit.register(shutil.rmtree, _WORK, True)
(_WORK / "folder").mkdir()
(_WORK / "garbage.toml").write_bytes(b"\x00\xff[[defense]\n")
(_WORK / "empty.json").write_text("")
(_WORK / "record.json").write_text('{"defenses": ["a"]}')
(_WORK / "file").write_text("x")

_NAMES = ["model_watermark", "explanations", "dp_sgd", "backdoor_pruning", "nope", "", "-",
          "group_fairness", "model_watermark"]  # fmt: skip
_PATHS = ["missing.toml", "folder", "garbage.toml", "empty.json", "record.json", "file/c",
          "/dev/null", "file", "x.yaml", "ü.json"]  # fmt: skip
_OPTIONS = {
    "--catalog": _PATHS, "--json": _PATHS, "--out": _PATHS, "--cache": _PATHS,
    "--data-dir": _PATHS, "--triples": _PATHS, "--dataset": ["digits", "mnist", "fmnist", ""],
    "--datasets": ["digits", ",", "adult,imagenet"], "--pairs": ["all", "a+b", "dp_sgd", "+"],
    "--seeds": ["0", "-1", "2", "x", "1000"], "--max-seeds": ["0", "1", "y"],
    "--seed-start": ["-3", "0"], "--technique": ["defcon", "naive", "magic"],
    "--tolerance": ["robust_accuracy=nan", "a=1", "=", "watermark_accuracy=-1"],
    "--profile": ["tiny", "quick", "nope"], "--workers": ["0", "2"],
    "--executor": ["local", "spark"], "--stability-start": ["0", "x"],
}  # fmt: skip
_INSTANT = ["list", "show", "check", "datasets", "report"]


@st.composite
def argument_lists(draw) -> list[str]:
    command = draw(st.sampled_from([*_INSTANT, "compose", "bench", "nope"]))
    tokens: list[str] = [command]
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["name", "option", "flag", "path", "text"]))
        if kind == "name":
            tokens.append(draw(st.sampled_from(_NAMES)))
        elif kind == "option":
            option = draw(st.sampled_from(sorted(_OPTIONS)))
            tokens += [option, draw(st.sampled_from(_OPTIONS[option]))]
        elif kind == "flag":
            tokens.append(draw(st.sampled_from(["--json", "--force", "-h", "--version", "-x"])))
        elif kind == "path":
            tokens.append(draw(st.sampled_from(_PATHS)))
        else:
            tokens.append(draw(st.text(min_size=0, max_size=8)))
    if command in ("compose", "bench"):
        tokens += ["--profile", "nope"]  # never trains: an unknown profile is always refused
    return tokens


def _assert_clean_exit(result, args) -> None:
    assert result.exit_code in (0, 2), (args, result.exit_code, result.exception, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, args
    assert result.exception is None or isinstance(result.exception, SystemExit), args


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(args=argument_lists())
def test_fuzz_cli_arguments_exit_0_or_2_without_traceback(args: list[str]) -> None:
    old = Path.cwd()
    os.chdir(_WORK)
    try:
        result = runner.invoke(app, args)
    finally:
        os.chdir(old)
    _assert_clean_exit(result, args)
    assert not list(_WORK.rglob("*.pt"))


_TOMLISH = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "[[defense]]",
                'name = "fuzz_mark"',
                'name = "dp_sgd"',
                'stage = "post"',
                'stage = "sideways"',
                'title = "t"',
                'mitigates = ["model_theft"]',
                'uses = [{ risk = "poisoning", reason = "r" }]',
                "[[defense.metrics]]",
                'name = "m"',
                'direction = "higher"',
                "tolerance = -1",
                "tolerance = nan",
                "defense = 3",
                "defense: [1]",
                '{"defense": [{}]}',
                "[",
                "]]",
                "= =",
            ]
        ),
        st.text(max_size=20),
    ),
    max_size=12,
).map("\n".join)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    content=st.one_of(_TOMLISH.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary()),
    suffix=st.sampled_from([".toml", ".yaml", ".json", ".txt"]),
)
def test_fuzz_catalog_contents_exit_0_or_2_without_traceback(content: bytes, suffix: str) -> None:
    path = _WORK / f"fuzz{suffix}"
    path.write_bytes(content)
    result = runner.invoke(app, ["check", *PAIR, "--catalog", str(path)])
    _assert_clean_exit(result, content)
