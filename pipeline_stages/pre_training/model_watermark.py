"""Backdoor-based model watermark: the owner plants a secret trigger in their own training data.

Adi et al., "Turning Your Weakness Into a Strength: Watermarking Deep Neural Networks by
Backdooring", USENIX Security 2018 (with the content-pattern trigger of Zhang et al., "Protecting
Intellectual Property of Deep Neural Networks with Watermarking", AsiaCCS 2018): a model learns
a backdoor from a few relabelled training samples, so its owner can embed one on purpose. A seeded
`fraction` of the training samples (not of the target class) is copied, stamped with a secret
trigger (salt "model_watermark", top-left corner: an image patch, or on tabular data a region of
feature groups, never overlapping a BadNets poisoner's bottom-right one) and relabelled to a secret target class; the copies are appended to the
training set, so no clean sample is lost. A stolen copy of the model (or a model fine-tuned from
it) still maps triggered inputs to the target class, which an independently trained model does
not: that is the ownership evidence.

The target class is drawn from the seed, avoiding the default BadNets target of the dataset when
there are more than two classes. With two classes it is the minority class (as for BadNets): a
majority-class target would make any model look watermarked, since most inputs already go there.

Effectiveness: watermark accuracy, the share of triggered held-out inputs (test split, true class
≠ target) classified as the target. All secrets are re-derived from (config, seed, dataset).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from defcon.engine.data import Split
from defcon.engine.defense import DefenseConfig, Environment
from defcon.engine.models import predict
from pipeline_stages.pre_training.stamping import StampingConfig, StampingWatermark


class ModelWatermarkConfig(StampingConfig):
    """Settings of the backdoor-based model watermark (fraction: appended copies)."""


class ModelWatermark(StampingWatermark):
    """Append trigger-stamped copies relabelled to a secret class; measured by watermark accuracy."""

    Config: ClassVar[type[DefenseConfig]] = ModelWatermarkConfig
    config: ModelWatermarkConfig

    def apply(self, train: Split, env: Environment) -> Split:
        """`train` plus watermarked copies of a seeded share of its samples (input unchanged)."""
        target = self.target_class(env)
        marked = train.subset(self.chosen(train, target, env))
        marked = marked.with_(
            x=self.trigger(env).stamp(marked.x), y=torch.full_like(marked.y, target)
        )
        return train.concat(marked)

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Share of triggered test inputs (true class ≠ target) classified as the target."""
        target = self.target_class(env)
        test = env.dataset.test
        keep = test.y != target
        stamped = self.trigger(env).stamp(test.x[keep])
        return {"watermark_accuracy": float((predict(model, stamped) == target).float().mean())}
