"""Models chosen by dataset: a small CNN for images, an MLP for tabular data.

Every model exposes `features` (an nn.Sequential ending in the penultimate representation) and
`head` (the final nn.Linear), so defenses that re-initialise the head or inspect the last hidden
layer work on any of them. `ArchConfig` rebuilds the exact architecture of a cached state dict.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from defcon.data import Dataset
from defcon.vocabulary import DataKind

Norm = Literal["batch", "group"]


class ArchConfig(BaseModel):
    """Everything needed to rebuild a model before loading its weights."""

    model_config = ConfigDict(frozen=True)

    family: Literal["cnn", "mlp"]
    input_shape: tuple[int, ...]
    num_classes: int
    width: int = 16
    norm: Norm = "batch"


def _norm_layer(norm: Norm, channels: int, dims: int) -> nn.Module:
    if norm == "group":
        if dims == 1:
            # One group over all features (a LayerNorm with per-feature affine). Opacus'
            # ModuleValidator.fix would use min(32, C) groups here, which on a flat 64-feature
            # layer normalises pairs of features to ±1 and leaves the MLP a constant predictor.
            return nn.GroupNorm(1, channels)
        # What Opacus' ModuleValidator.fix puts in place of BatchNorm2d.
        return nn.GroupNorm(min(32, channels), channels)
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)


class SmallCNN(nn.Module):
    """Two conv blocks (conv → norm → ReLU → pool) and a linear head."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        channels, height, width = config.input_shape
        w = config.width
        self.features = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1),
            _norm_layer(config.norm, w, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            _norm_layer(config.norm, 2 * w, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * (height // 4) * (width // 4), 4 * w),
            nn.ReLU(),
        )
        self.head = nn.Linear(4 * w, config.num_classes)
        # Channels-last runs the BatchNorm network's conv/norm/pool about a third faster on CPU
        # (same numbers up to float rounding); GroupNorm and Opacus' per-sample hooks are
        # slower in it, so DP models stay in the default layout.
        self.channels_last = config.norm == "batch"
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.features(x))


class MLP(nn.Module):
    """Two hidden layers with normalisation, and a linear head."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        (n_features,) = config.input_shape
        hidden = 4 * config.width
        self.features = nn.Sequential(
            nn.Linear(n_features, hidden),
            _norm_layer(config.norm, hidden, 1),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden // 2, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def arch_for(dataset: Dataset, *, width: int = 16, norm: Norm = "batch") -> ArchConfig:
    """The architecture defcon uses for a dataset: CNN for images, MLP for tabular data."""
    family = "cnn" if dataset.kind is DataKind.IMAGE else "mlp"
    return ArchConfig(
        family=family,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        width=width,
        norm=norm,
    )


def build_model(config: ArchConfig, seed: int) -> nn.Module:
    """A freshly initialised model; the initialisation is fixed by `seed`."""
    torch.manual_seed(seed)
    return SmallCNN(config) if config.family == "cnn" else MLP(config)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Class predictions in eval mode, in batches (the model is left in eval mode)."""
    model.eval()
    return torch.cat([model(chunk).argmax(1) for chunk in x.split(batch_size)])


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk).softmax(1) for chunk in x.split(batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    return float((predict(model, x) == y).float().mean())
