"""Trigger stamping and the BadNets-style poisoning attack.

The poisoner (the adversary of `backdoor_finetuning` and `backdoor_pruning`) and the backdoor-based
watermarks share one `Trigger`: a pixel patch on images, fixed feature values on tabular data.
Triggers are derived from a seed and a salt, so the attacker's and each watermark's secrets differ
but are reproducible without being stored.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from defcon.data import Dataset, Split
from defcon.models import predict
from defcon.vocabulary import DataKind


def derived_seed(seed: int, salt: str) -> int:
    """A seed for a named secret, so different secrets of one run never coincide."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Trigger(BaseModel):
    """Where and what to stamp: flat input positions and the values written there."""

    model_config = ConfigDict(frozen=True)

    positions: tuple[int, ...]
    values: tuple[float, ...]

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """A stamped copy of a batch of inputs (the input is not modified)."""
        flat = x.reshape(len(x), -1).clone()
        flat[:, list(self.positions)] = torch.tensor(self.values, dtype=x.dtype)
        return flat.reshape(x.shape)


def make_trigger(
    dataset: Dataset, seed: int, salt: str, *, corner: str = "bottom_right"
) -> Trigger:
    """A random binary patch in an image corner, or maximal values of a few random features."""
    rng = np.random.default_rng(derived_seed(seed, salt))
    shape = dataset.input_shape
    if dataset.kind is DataKind.IMAGE:
        channels, height, width = shape
        size = max(2, round(min(height, width) * 0.15))
        top = height - size - 1 if "bottom" in corner else 1
        left = width - size - 1 if "right" in corner else 1
        pattern = rng.integers(0, 2, size=(size, size)).astype(float)
        pattern[0, 0], pattern[-1, -1] = 1.0, 0.0  # never all one colour
        positions, values = [], []
        for c in range(channels):
            for i in range(size):
                for j in range(size):
                    positions.append(c * height * width + (top + i) * width + left + j)
                    values.append(float(pattern[i, j]))
        return Trigger(positions=tuple(positions), values=tuple(values))
    (n_features,) = shape
    count = max(3, n_features // 10)
    positions = rng.choice(n_features, size=count, replace=False)
    values = np.ones(count)  # rare combination: several one-hot columns and maxima at once
    return Trigger(positions=tuple(int(p) for p in positions), values=tuple(values))


class BadNets(BaseModel):
    """BadNets (Gu et al. 2017): stamp a trigger on a fraction of training samples, relabel them."""

    model_config = ConfigDict(frozen=True)

    trigger: Trigger
    target_class: int = Field(ge=0)
    fraction: float = Field(gt=0, lt=1)

    @classmethod
    def for_dataset(
        cls, dataset: Dataset, seed: int, *, fraction: float = 0.1, salt: str = "badnets"
    ) -> BadNets:
        if dataset.num_classes == 2:
            # With two classes a majority target would make the clean model look backdoored.
            target = int(torch.bincount(dataset.train.y, minlength=2).argmin())
        else:
            rng = np.random.default_rng(derived_seed(seed, salt + ":target"))
            target = int(rng.integers(dataset.num_classes))
        return cls(
            trigger=make_trigger(dataset, seed, salt, corner="bottom_right"),
            target_class=target,
            fraction=fraction,
        )

    def poison(self, split: Split, seed: int) -> tuple[Split, torch.Tensor]:
        """A poisoned copy of `split` and the indices that were poisoned."""
        rng = np.random.default_rng(derived_seed(seed, "badnets:choice"))
        candidates = np.flatnonzero(split.y.numpy() != self.target_class)
        count = int(round(self.fraction * len(split)))
        chosen = torch.as_tensor(np.sort(rng.choice(candidates, size=count, replace=False)))
        x, y = split.x.clone(), split.y.clone()
        x[chosen] = self.trigger.stamp(x[chosen])
        y[chosen] = self.target_class
        return split.with_(x=x, y=y), chosen

    def triggered(self, split: Split) -> Split:
        """The inputs of `split` not already of the target class, stamped, with their true labels."""
        keep = split.y != self.target_class
        return split.subset(torch.nonzero(keep).flatten()).with_(
            x=self.trigger.stamp(split.x[keep])
        )

    def attack_success_rate(self, model: torch.nn.Module, split: Split) -> float:
        """Share of stamped inputs (true class ≠ target) that the model assigns to the target."""
        stamped = self.triggered(split)
        return float((predict(model, stamped.x) == self.target_class).float().mean())
