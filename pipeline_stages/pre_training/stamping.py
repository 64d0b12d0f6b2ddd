"""What the two backdoor-based pre-training watermarks share: their secrets and sample choice.

Both stamp a secret trigger on a seeded share of the training samples (not of the target class)
and relabel them to a secret target class; they differ in what they do with the stamped samples
(append copies vs replace) and in how ownership is verified. Every secret is re-derived from
(config, seed, dataset), so `measure` works on a model loaded from the cache. The `corner` keeps
secrets apart: an image patch position, or a disjoint region of tabular feature groups
(`defcon.engine.attacks.trigger_regions`); the target class comes first, since a tabular trigger is
chosen against it (values an independent model does not associate with the target).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from defcon.engine.attacks import Corner, Trigger, default_target, make_trigger
from defcon.engine.data import Dataset, Split
from defcon.engine.defense import DefenseConfig, Environment, PreTrainingDefense
from defcon.engine.seeds import derived_seed


class StampingConfig(DefenseConfig):
    """Where the trigger goes and how many samples carry it."""

    fraction: float = Field(
        default=0.05, gt=0, lt=1, description="share of the training set stamped"
    )
    corner: Corner = "top_left"


def watermark_target(dataset: Dataset, seed: int, salt: str) -> int:
    """A seeded target class ≠ the dataset's default BadNets target (minority class if binary)."""
    badnets_target = default_target(dataset, seed)
    if dataset.num_classes == 2:
        return badnets_target  # a majority-class target would make any model look watermarked
    choices = [c for c in range(dataset.num_classes) if c != badnets_target]
    rng = np.random.default_rng(derived_seed(seed, salt + ":target"))
    return int(choices[rng.integers(len(choices))])


class StampingWatermark(PreTrainingDefense):
    """Base of the backdoor watermarks: the secret trigger, target class and stamped samples."""

    config: StampingConfig
    Config: ClassVar[type[DefenseConfig]] = StampingConfig

    def trigger(self, env: Environment) -> Trigger:
        """The secret trigger: salt = the defense's name, chosen against its target class."""
        return make_trigger(
            env.dataset,
            env.seed,
            self.name,
            target_class=self.target_class(env),
            corner=self.config.corner,
        )

    def target_class(self, env: Environment) -> int:
        return watermark_target(env.dataset, env.seed, self.name)

    def chosen(self, train: Split, target: int, env: Environment) -> torch.Tensor:
        """Seeded indices of the samples to stamp: a `fraction` of `train`, none of class `target`."""
        candidates = np.flatnonzero(train.y.numpy() != target)
        count = min(len(candidates), max(1, round(self.config.fraction * len(train))))
        rng = np.random.default_rng(derived_seed(env.seed, f"{self.name}:choice"))
        return torch.as_tensor(np.sort(rng.choice(candidates, size=count, replace=False)))
