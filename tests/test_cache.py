"""Fault injection on the cache: a damaged or edited entry is never served, and is recomputed
with a warning naming it; keys change with the code and the thread count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from defcon.engine.models import ArchConfig, build_model
from defcon.engine.training import TrainedModel
from defcon.measure.cache import ModelCache, content_key
from defcon.measure.composer import Composer

ARCH = ArchConfig(family="mlp", input_shape=(6,), num_classes=2, width=2)


def _trained() -> TrainedModel:
    return TrainedModel(model=build_model(ARCH, seed=0), arch=ARCH, record={"x": 1.0})


def _cache(tmp_path: Path) -> tuple[ModelCache, list[str]]:
    warnings: list[str] = []
    return ModelCache(tmp_path / "cache", warn=warnings.append), warnings


def _model_files(tmp_path: Path) -> tuple[Path, Path]:
    (weights,) = (tmp_path / "cache" / "models").rglob("*.pt")
    return weights, weights.with_suffix(".json")


@pytest.mark.parametrize(
    "damage", ["truncate_weights", "edit_weights", "truncate_meta", "edit_meta"]
)
def test_a_damaged_model_entry_is_retrained_with_a_warning(tmp_path: Path, damage: str) -> None:
    cache, warnings = _cache(tmp_path)
    cache.model({"k": 1}, _trained)
    weights, meta = _model_files(tmp_path)
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "edit_weights":
        data = bytearray(weights.read_bytes())
        data[-20] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate_meta":
        meta.write_text(meta.read_text()[:30])
    else:
        info = json.loads(meta.read_text())
        info["record"]["x"] = 2.0
        meta.write_text(json.dumps(info))
    calls = []
    again = cache.model({"k": 1}, lambda: calls.append(1) or _trained())
    assert calls == [1]  # recomputed, not served
    assert again.record == {"x": 1.0}
    assert len(warnings) == 1 and str(weights) in warnings[0]
    assert cache.stats()["entries_recomputed"] == 1
    cache.model({"k": 1}, lambda: pytest.fail("a repaired entry must be served"))


@pytest.mark.parametrize("damage", ["truncate", "edit_value", "not_json"])
def test_a_damaged_measurement_is_recomputed_with_a_warning(tmp_path: Path, damage: str) -> None:
    cache, warnings = _cache(tmp_path)
    assert cache.measurement({"m": 1}, lambda: {"acc": 0.9}) == {"acc": 0.9}
    (path,) = (tmp_path / "cache" / "measurements").rglob("*.json")
    if damage == "truncate":
        path.write_text(path.read_text()[:20])
    elif damage == "edit_value":
        entry = json.loads(path.read_text())
        entry["metrics"]["acc"] = 0.1  # would flip a label if served
        path.write_text(json.dumps(entry))
    else:
        path.write_bytes(b"\xff\xfe garbage")
    assert cache.measurement({"m": 1}, lambda: {"acc": 0.9}) == {"acc": 0.9}
    assert len(warnings) == 1 and str(path) in warnings[0]


def test_a_killed_writers_temporary_files_are_swept_when_the_entry_is_written(
    tmp_path: Path,
) -> None:
    cache, warnings = _cache(tmp_path)
    key = content_key({"m": 3})
    orphans = [
        tmp_path / "cache" / "measurements" / key[:2] / f".{key}.json.dead1.tmp",
        tmp_path / "cache" / "models" / key[:2] / f".{key}.pt.dead2.tmp",
    ]
    other = tmp_path / "cache" / "measurements" / key[:2] / ".someone-else.json.x.tmp"
    for path in [*orphans, other]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert cache.measurement({"m": 3}, lambda: {"acc": 0.5}) == {"acc": 0.5}
    assert not any(path.exists() for path in orphans)
    assert other.exists()  # another entry's file: its own writer may still be alive
    assert not warnings


def test_infinite_measurements_round_trip_as_valid_json(tmp_path: Path) -> None:
    cache, warnings = _cache(tmp_path)
    cache.measurement({"m": 2}, lambda: {"epsilon": float("inf")})
    (path,) = (tmp_path / "cache" / "measurements").rglob("*.json")
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert cache.measurement({"m": 2}, lambda: pytest.fail("cached")) == {"epsilon": float("inf")}
    assert not warnings


def test_model_keys_carry_the_code_hash_and_the_thread_count(tmp_path: Path) -> None:
    composer = Composer("digits", profile="tiny", cache_dir=tmp_path)
    key = composer._base_key(0)
    assert len(key["code"]) == 16
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)
        assert content_key(composer._base_key(0)) != content_key(key)
    finally:
        torch.set_num_threads(threads)
    assert key["data_dir"] is None  # digits ignores --data-dir: not part of its key


def test_waiting_for_another_process_lock_is_said(tmp_path: Path) -> None:
    """While another process holds an entry's lock, the run says what it is waiting for."""
    import threading

    from filelock import FileLock

    lines: list[str] = []
    cache = ModelCache(tmp_path / "cache", log=lines.append)
    description = {"what": "shared"}
    key = content_key(description)
    (tmp_path / "cache" / "locks").mkdir(parents=True)
    other = FileLock(str(tmp_path / "cache" / "locks" / f"{key}.lock"), thread_local=False)
    other.acquire()
    done = threading.Event()

    def measure() -> None:
        cache.measurement(description, lambda: {"m": 1.0}, label="measuring x")
        done.set()

    worker = threading.Thread(target=measure)
    worker.start()
    assert not done.wait(0.5)  # blocked on the other holder
    assert lines == ["waiting for another process that is computing the same entry (measuring x)"]
    other.release()
    worker.join(5)
    assert done.is_set() and lines[-1] == "measuring x"
