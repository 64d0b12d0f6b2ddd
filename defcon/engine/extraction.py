"""Model extraction: a thief trains a surrogate on the API's answers (one loop for every user).

The thief queries the served model, trains the threat model's own architecture on the answers
(Tramèr et al., "Stealing Machine Learning Models via Prediction APIs", USENIX Security 2016;
Orekondy et al., Knockoff Nets, CVPR 2019) and keeps the epoch whose surrogate agrees best with
the API on queries it held out: a rational thief early-stops, and a thief that does not is a
setting. The audit's model-theft risk and output_watermark's verification both call it, so the
two measure the same thief.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from defcon.engine.data import Split
from defcon.engine.devices import place
from defcon.engine.models import ArchConfig, build_model, predict
from defcon.planning.profiles import Profile


@dataclass(frozen=True)
class Extraction:
    """The thief's surrogate and how its training went."""

    model: nn.Module
    arch: ArchConfig
    best_epoch: int
    epochs: int
    held_out_agreement: float


def extract(
    fit: Split,
    check: Split,
    arch: ArchConfig,
    profile: Profile,
    seed: int,
    *,
    max_epochs: int,
    patience: int,
    early_stopping: bool = True,
    device: torch.device | None = None,
) -> Extraction:
    """Train a surrogate of `arch` on `fit` (inputs with the API's answers as labels); with
    `early_stopping`, keep the epoch of best agreement with `check` and stop after `patience`
    epochs without a better one, else keep the last epoch."""
    torch.manual_seed(seed)
    surrogate = build_model(arch, seed)
    if device is not None:
        surrogate = place(surrogate, device)  # the thief's own hardware
    optimizer = torch.optim.Adam(surrogate.parameters(), lr=profile.lr)
    loader = fit.loader(profile.batch_size, shuffle=True, seed=seed)
    best, best_state, best_epoch, epochs = -1.0, None, 0, 0
    for epoch in range(max_epochs):
        surrogate.train()
        for x, y, _ in loader:
            if len(y) < 2:  # BatchNorm needs two rows
                continue
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(surrogate(x), y).backward()
            optimizer.step()
        epochs = epoch + 1
        agreement = float((predict(surrogate, check.x) == check.y).float().mean())
        if not early_stopping:
            best, best_epoch = agreement, epochs
        elif agreement > best:
            best, best_epoch = agreement, epochs
            best_state = copy.deepcopy(surrogate.state_dict())
        elif epochs - best_epoch >= patience:
            break
    if best_state is not None:
        surrogate.load_state_dict(best_state)
    surrogate.eval()
    return Extraction(surrogate, arch, best_epoch, epochs, best)
