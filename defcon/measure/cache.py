"""A content-addressed cache of trained models and of measurements.

Keys are SHA-256 hashes of a canonical JSON description of everything that determines the
result (dataset, seed, profile, scenario, ordered defense configs, torch threads, a hash of the
code that trains and measures). Entries are written atomically, so an interrupted run leaves
either a complete entry or none, and a rerun resumes from what is there. Every entry carries a
SHA-256 checksum of its content and is verified on load: a truncated, corrupt or edited entry is
never served; it is recomputed with a warning naming its path. Checkpoints are plain state
dicts, loaded with `weights_only=True`. Concurrent workers sharing one folder coordinate through
a lock per key, so a model is trained once even when two combinations need it at the same time.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from defcon.engine.models import ArchConfig, build_model
from defcon.engine.training import TrainedModel
from defcon.storage import atomic_write_bytes, read_regular_bytes, remove_link, safe_folder
from defcon.terminal import warn as warn_stderr


def _checksum(payload: Any) -> str:
    """SHA-256 of the canonical JSON of `payload` (key order and spacing fixed)."""
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def content_key(description: Any) -> str:
    """A stable hash of a JSON-serialisable description."""
    return _checksum(description)[:32]


class ModelCache:
    """Trained models and measurements on disk, with counters of what was computed vs reused.

    `seconds` accumulates the time spent computing (cache misses), by label, so a run can say
    where its time went.
    """

    def __init__(
        self,
        root: Path | str,
        warn: Callable[[str], None] = warn_stderr,
        log: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.root = Path(root)
        self.warn = warn
        self.log = log
        self.trained = 0
        self.reused = 0
        self.measured = 0
        self.measurements_reused = 0
        self.recomputed = 0
        self.seconds: dict[str, float] = {}
        self._open: list[float] = []  # time of nested timed sections, per open section

    def _discard(self, path: Path, error: Exception) -> None:
        """Warn that the entry at `path` is not served, and count it as recomputed."""
        detail = str(error).splitlines()[0] if str(error) else "unreadable"
        if any(p.is_symlink() for p in (path, path.with_suffix(".json"))):
            self.warn(f"cache entry {path} is a symbolic link, never followed; recomputing it")
        else:
            self.warn(
                f"cache entry {path} is corrupt or was modified ({type(error).__name__}: "
                f"{detail}); recomputing it"
            )
        self.recomputed += 1

    def timed(self, label: str, fn: Callable[[], Any]) -> Any:
        """Run `fn`, adding its own time (nested timed sections excluded) to `seconds[label]`."""
        started = time.perf_counter()
        self._open.append(0.0)
        try:
            return fn()
        finally:
            elapsed = time.perf_counter() - started
            nested = self._open.pop()
            self.seconds[label] = self.seconds.get(label, 0.0) + elapsed - nested
            if self._open:
                self._open[-1] += elapsed

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / "models" / key[:2]
        return folder / f"{key}.pt", folder / f"{key}.json"

    def _write(self, path: Path, data: bytes) -> None:
        """Write an entry file: its folders below the cache root made real (a link there is
        replaced), the file itself replaced atomically (a link there too, never followed)."""
        safe_folder(path.parent, self.root, self.warn)
        atomic_write_bytes(path, data, self.warn)

    @contextmanager
    def _lock(self, key: str, label: str) -> Iterator[None]:
        """Hold the entry's lock; say so when another process holds it (it may take minutes)."""
        lock_dir = safe_folder(self.root / "locks", self.root, self.warn)
        lock = FileLock(str(remove_link(lock_dir / f"{key}.lock", self.warn)))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self.log(f"waiting for another process that is computing the same entry ({label})")
            lock.acquire()
        try:
            self._sweep_orphans(key)
            yield
        finally:
            lock.release()

    def _sweep_orphans(self, key: str) -> None:
        """Remove the temporary files a killed writer of this entry left behind: the entry's
        lock is held, so no live process is writing them."""
        for kind in ("models", "measurements"):
            for orphan in (self.root / kind / key[:2]).glob(f".{key}.*.tmp"):  # links too
                orphan.unlink(missing_ok=True)

    def load_model(self, key: str) -> TrainedModel | None:
        """The verified cached model, or None when absent (or bad: warned, to be recomputed)."""
        weights, meta = self._paths(key)
        if not any(p.is_file() or p.is_symlink() for p in (weights, meta)):
            return None
        try:
            info = json.loads(read_regular_bytes(meta))  # a link: refused, recomputed
            data = read_regular_bytes(weights)
            if info.get("sha256") != hashlib.sha256(data).hexdigest():
                raise ValueError("weights do not match their recorded checksum")
            payload = {k: info[k] for k in ("arch", "record", "description")}
            if info.get("meta_sha256") != _checksum(payload):
                raise ValueError("metadata does not match its recorded checksum")
            arch = ArchConfig.model_validate(info["arch"])
            model = build_model(arch, seed=0)
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as error:  # any corruption: never served, recomputed
            self._discard(weights, error)
            return None
        model.eval()
        return TrainedModel(model=model, arch=arch, record=dict(info.get("record", {})))

    def model(
        self,
        description: dict[str, Any],
        train_fn: Callable[[], TrainedModel],
        label: str = "training",
    ) -> TrainedModel:
        """The cached model for `description`, training it with `train_fn` on a miss."""
        key = content_key(description)
        with self._lock(key, label):
            cached = self.load_model(key)
            if cached is not None:
                self.reused += 1
                return cached
            trained = self.timed(label, train_fn)
            buffer = io.BytesIO()
            torch.save(trained.model.state_dict(), buffer)
            data = buffer.getvalue()
            weights, meta = self._paths(key)
            self._write(weights, data)
            payload = {
                "arch": trained.arch.model_dump(mode="json"),
                "record": trained.record,
                "description": description,
            }
            entry = {
                **payload,
                "sha256": hashlib.sha256(data).hexdigest(),
                "meta_sha256": _checksum(payload),
            }
            self._write(meta, _json_bytes(entry))
            self.trained += 1
            return trained

    def measurement(
        self,
        description: dict[str, Any],
        measure_fn: Callable[[], dict[str, float]],
        label: str = "measuring",
    ) -> dict[str, float]:
        """Cached metrics for `description`, computing them with `measure_fn` on a miss.

        Values are stored as JSON numbers; ±∞ and NaN as the strings "inf", "-inf", "nan"
        inside the checksummed payload (never served unverified).
        """
        key = content_key(description)
        path = self.root / "measurements" / key[:2] / f"{key}.json"
        with self._lock(key, label):
            if path.is_file() or path.is_symlink():
                try:
                    entry = json.loads(read_regular_bytes(path))
                    payload = {"metrics": entry["metrics"], "description": entry["description"]}
                    if entry.get("sha256") != _checksum(payload):
                        raise ValueError("content does not match its recorded checksum")
                    metrics = {name: float(value) for name, value in entry["metrics"].items()}
                except Exception as error:
                    self._discard(path, error)
                else:
                    self.measurements_reused += 1
                    return metrics
            self.log(label)
            measured = self.timed(label, measure_fn)
            metrics = {name: float(value) for name, value in measured.items()}
            stored = {name: _json_number(value) for name, value in metrics.items()}
            payload = {"metrics": stored, "description": description}
            self._write(path, _json_bytes({**payload, "sha256": _checksum(payload)}))
            self.measured += 1
            return metrics

    def stats(self) -> dict[str, int]:
        return {
            "models_trained": self.trained,
            "models_reused": self.reused,
            "measurements_computed": self.measured,
            "measurements_reused": self.measurements_reused,
            "entries_recomputed": self.recomputed,
        }


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _json_number(value: float) -> float | str:
    """A JSON-safe number: finite floats as is, ±∞/NaN as the strings float() reads back."""
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return value
