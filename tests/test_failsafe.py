"""Fail safe (issue 13), below the CLI: file writes, IDX files, bench summaries, the check() API."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from defcon.errors import DefconError
from defcon.storage import atomic_write_text

# --------------------------------------------------------------------------- item 1: links, special files


def test_a_symlink_is_replaced_never_written_through(tmp_path: Path, capsys) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert target.read_text() == "old"  # issue 20: the link's target is never written
    assert "is a symbolic link; replacing the link" in capsys.readouterr().err
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "later.json")
    atomic_write_text(dangling, "x")
    assert not dangling.is_symlink() and not (tmp_path / "later.json").exists()


def test_a_special_file_or_directory_is_refused_never_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DefconError, match="pipe.*a FIFO, not a regular file"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(DefconError, match="folder.*a directory"):
        atomic_write_text(folder, "x")
    link = tmp_path / "to-null"
    link.symlink_to("/dev/null")
    atomic_write_text(link, "x")  # the link is replaced; /dev/null is not opened
    assert not link.is_symlink() and link.read_text() == "x"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_is_one_error_naming_the_path(tmp_path: Path, monkeypatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("defcon.storage.os.fsync", full)
    path = tmp_path / "out.json"
    with pytest.raises(DefconError, match=r"cannot write '.*out\.json': No space left on device"):
        atomic_write_text(path, "x")
    assert not path.exists() and not list(tmp_path.iterdir())  # no temporary file left behind


# --------------------------------------------------------------------------- item 8: the umask


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_respect_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.json", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == mode


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "new"


# --------------------------------------------------------------------------- item 6: IDX files


def _idx(dims: list[int], fill: int = 1) -> bytes:
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    count = 1
    for d in dims:
        count *= d
    return header + bytes([fill]) * count


def _fmnist_folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    from defcon.engine.data import FMNIST_FILES

    for key, stem in FMNIST_FILES.items():
        (tmp_path / stem).write_bytes(files[key])
    return tmp_path


def test_random_bytes_named_like_the_idx_files_are_one_error_naming_the_file(tmp_path: Path):
    from defcon.engine.data import load_dataset

    noise = os.urandom(4096)
    folder = _fmnist_folder(
        tmp_path, dict.fromkeys(("train_x", "train_y", "test_x", "test_y"), noise)
    )
    with pytest.raises(DefconError, match="train-images-idx3-ubyte' is not a valid IDX file"):
        load_dataset("fmnist", data_dir=folder)


def test_a_truncated_idx_file_and_mismatched_counts_are_refused(tmp_path: Path) -> None:
    from defcon.engine.data import load_dataset

    good = {"train_x": _idx([6000, 28, 28]), "train_y": _idx([6000]),
            "test_x": _idx([10, 28, 28]), "test_y": _idx([10])}  # fmt: skip
    folder = _fmnist_folder(tmp_path, {**good, "test_x": _idx([10, 28, 28])[:-5]})
    with pytest.raises(DefconError, match="t10k-images-idx3-ubyte' is not a valid IDX file"):
        load_dataset("fmnist", data_dir=folder)
    _fmnist_folder(tmp_path, {**good, "test_y": _idx([9])})
    with pytest.raises(DefconError, match="test files .* do not match"):
        load_dataset("fmnist", data_dir=folder)
    _fmnist_folder(tmp_path, good)  # well-formed files load
    assert len(load_dataset("fmnist", data_dir=folder, max_train=5).train) == 5


# --------------------------------------------------------------------------- item 7: bench summaries


def test_a_narrower_bench_rerun_summarises_every_record_in_the_folder(
    tmp_path: Path, fake_record
) -> None:
    from defcon.bench.results import write_results
    from defcon.bench.run import run_bench
    from defcon.report.reports import save_record

    records = tmp_path / "records"
    save_record(fake_record("adult", ("dp_sgd", "explanations")), records / "adult" / "a.json")
    # this run's only combination is already measured, so nothing trains
    pair = ("model_watermark", "explanations")
    save_record(
        fake_record("digits", pair),
        records / "digits" / "digits-tiny-seeds0+1to1-model_watermark+explanations.json",
    )
    (records / "digits" / "garbage.json").write_bytes(b"\xff not a record")
    messages: list[str] = []
    result = run_bench(
        ["digits"], pairs=[pair], seeds=1, profile="tiny", out=tmp_path, log=messages.append
    )
    assert {(r.dataset, r.order) for r in result.records} == {
        ("adult", ("dp_sgd", "explanations")),
        ("digits", pair),
    }
    assert any("skipped" in m and "garbage.json" in m for m in messages)
    markdown, _ = write_results(result, tmp_path)
    text = markdown.read_text()
    assert "### adult" in text and "### digits" in text
    assert "dp_sgd → explanations" in text
    import json

    scores = json.loads((tmp_path / "scores.json").read_text())
    assert "adult" in scores and "digits" in scores


# --------------------------------------------------------------------------- item 10: the API


def test_check_takes_a_bare_string_as_one_name() -> None:
    import defcon

    with pytest.raises(DefconError, match=r"at least 2 defenses, got 1 \(model_watermark\)"):
        defcon.check("model_watermark")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((None,), {}, "takes a list of defense names.*got NoneType"),
        (([1, 2],), {}, r"got 1 \(int\) in the list"),
        ((["dp_sgd", "explanations"],), {"catalog": ["x"]}, r"catalog=.*got list"),
        ((["dp_sgd", "explanations"],), {"catalog": {"a": 1}}, "entry 'a' is a int"),
        ((["dp_sgd", "explanations"],), {"technique": None}, "technique name"),
        (({"dp_sgd": 1},), {}, "got dict"),
    ],
)
def test_check_rejects_wrong_types_at_the_boundary(args, kwargs, message) -> None:
    import defcon

    with pytest.raises(DefconError, match=message):
        defcon.check(*args, **kwargs)


def test_a_declared_slot_exclusion_is_reported_and_refused_before_training(tmp_path) -> None:
    """certified_watermark + dp_sgd: check says why; compose refuses before any training."""
    from defcon import check
    from defcon.errors import DefconError
    from defcon.measure.composer import Composer

    verdict = check(["certified_watermark", "dp_sgd"])
    assert not verdict.composable
    (clash,) = verdict.clashes
    assert clash.defenses == ("certified_watermark", "dp_sgd")
    assert clash.slot == "privacy_wrapper" and "silently dropped" in clash.sentence()
    composer = Composer("digits", profile="tiny", cache_dir=tmp_path)
    with pytest.raises(DefconError, match="cannot compose: certified_watermark cannot train"):
        composer.compose(["certified_watermark", "dp_sgd"], seeds=1)
    assert composer.cache.trained == 0


def test_slot_exclusions_belong_to_in_training_defenses() -> None:
    from pydantic import ValidationError

    from defcon.vocabulary import DefenseSpec

    base = {
        "name": "x", "title": "x", "mitigates": ["opacity"],
        "metrics": [{"name": "m", "direction": "higher", "tolerance": 0.1}],
        "excludes": [{"slot": "privacy_wrapper", "reason": "hooks"}],
    }  # fmt: skip
    with pytest.raises(ValidationError, match="only in-training defenses"):
        DefenseSpec.model_validate({**base, "stage": "post"})
    spec = DefenseSpec.model_validate({**base, "stage": "in", "slots": ["loss_term"]})
    assert spec.excludes[0].reason == "hooks"
