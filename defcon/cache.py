"""A content-addressed cache of trained models and of measurements.

Keys are SHA-256 hashes of a canonical JSON description of everything that determines the
result (dataset, seed, profile, scenario, ordered defense configs). Entries are written
atomically, so an interrupted run leaves either a complete entry or none, and a rerun resumes
from what is there. Checkpoints are plain state dicts, loaded with `weights_only=True`.
Concurrent workers sharing one folder coordinate through a lock per key, so a model is trained
once even when two combinations need it at the same time.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from defcon.models import ArchConfig, build_model
from defcon.storage import atomic_write_bytes, atomic_write_json
from defcon.training import TrainedModel


def content_key(description: Any) -> str:
    """A stable hash of a JSON-serialisable description."""
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class ModelCache:
    """Trained models and measurements on disk, with counters of what was computed vs reused."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.trained = 0
        self.reused = 0
        self.measured = 0
        self.measurements_reused = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / "models" / key[:2]
        return folder / f"{key}.pt", folder / f"{key}.json"

    def _lock(self, key: str) -> FileLock:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock_dir / f"{key}.lock"))

    def load_model(self, key: str) -> TrainedModel | None:
        weights, meta = self._paths(key)
        if not (weights.is_file() and meta.is_file()):
            return None
        info = json.loads(meta.read_text())
        arch = ArchConfig.model_validate(info["arch"])
        model = build_model(arch, seed=0)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        return TrainedModel(model=model, arch=arch, record=dict(info.get("record", {})))

    def model(
        self, description: dict[str, Any], train_fn: Callable[[], TrainedModel]
    ) -> TrainedModel:
        """The cached model for `description`, training it with `train_fn` on a miss."""
        key = content_key(description)
        with self._lock(key):
            cached = self.load_model(key)
            if cached is not None:
                self.reused += 1
                return cached
            trained = train_fn()
            buffer = io.BytesIO()
            torch.save(trained.model.state_dict(), buffer)
            weights, meta = self._paths(key)
            atomic_write_bytes(weights, buffer.getvalue())
            atomic_write_json(
                meta,
                {
                    "arch": trained.arch.model_dump(mode="json"),
                    "record": trained.record,
                    "description": description,
                },
            )
            self.trained += 1
            return trained

    def measurement(
        self, description: dict[str, Any], measure_fn: Callable[[], dict[str, float]]
    ) -> dict[str, float]:
        """Cached metrics for `description`, computing them with `measure_fn` on a miss."""
        key = content_key(description)
        path = self.root / "measurements" / key[:2] / f"{key}.json"
        with self._lock(key):
            if path.is_file():
                self.measurements_reused += 1
                return json.loads(path.read_text())["metrics"]
            metrics = {name: float(value) for name, value in measure_fn().items()}
            atomic_write_json(path, {"metrics": metrics, "description": description})
            self.measured += 1
            return metrics

    def stats(self) -> dict[str, int]:
        return {
            "models_trained": self.trained,
            "models_reused": self.reused,
            "measurements_computed": self.measured,
            "measurements_reused": self.measurements_reused,
        }
