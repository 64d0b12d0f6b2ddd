"""Cheap measurements of the SoK's factors on a trained model, recorded beside every measurement.

Factor declarations (which factors a defense moves, which its effectiveness depends on) are
claims from the literature. These probes check them on the models defcon actually builds: each
reads one factor of docs/factors.md directly from the model, with a few forward/backward
passes on at most `PROBE_SAMPLES` inputs of a fixed seeded subset, so it costs a fraction of a
second beside the minutes of training.

| probe | factor | what it reads |
|---|---|---|
| generalization_gap | O2.1 (in vs out distinguishability) | mean test loss − mean loss on the clean training records |
| boundary_distance | O3 (distance of training data to the boundary) | first-order L2 distance of clean training records to the nearest other-class boundary, |f_y − f_k| / ‖∇x (f_y − f_k)‖ (DeepFool's linearisation; negative when misclassified) |
| input_gradient_norm | O1 (curvature smoothness, inverted) | mean ‖∇x CE(f(x), y)‖₂ on test inputs: a smoother objective has smaller gradients |
| group_accuracy_gap | O2.2 (distinguishability across subgroups) | largest minus smallest per-group test accuracy (fairlearn MetricFrame); NaN without a sensitive attribute |
| parameters | M1 (capacity) | non-zero trainable parameters (pruned weights set to zero no longer count) |

The probes read the weights a serving wrapper sits in front of (`weights_of`): an API wrapper
changes answers, not the factors of the model behind it; a post-training change of the weights
(pruning) is read. One exception: the groups' gap (O2.2) is a property of the *observables*, so
it is read on what the pipeline serves — a wrapper that re-thresholds per group moves it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from fairlearn.metrics import MetricFrame
from torch import nn

from defcon.engine.data import Split
from defcon.engine.defense import Environment, weights_of
from defcon.engine.seeds import derived_seed

PROBE_SAMPLES = 512

PROBES: dict[str, str] = {
    "generalization_gap": "O2.1",
    "boundary_distance": "O3",
    "input_gradient_norm": "O1",
    "group_accuracy_gap": "O2.2",
    "parameters": "M1",
}
"""Probe name → the factor it reads (docs/factors.md ids)."""

INVERTED = frozenset({"input_gradient_norm"})
"""Probes that fall when their factor rises (a larger input gradient is a sharper objective)."""


def _sample(split: Split, seed: int, salt: str) -> Split:
    if len(split) <= PROBE_SAMPLES:
        return split
    rng = np.random.default_rng(derived_seed(seed, f"probes:{salt}"))
    return split.subset(np.sort(rng.choice(len(split), PROBE_SAMPLES, replace=False)))


def _mean_loss(model: nn.Module, split: Split) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(split.x), split.y))


def boundary_distance(model: nn.Module, split: Split) -> float:
    """Mean signed first-order L2 distance to the nearest other-class decision boundary."""
    x = split.x.clone().requires_grad_(True)
    logits = model(x)
    true = logits.gather(1, split.y[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, split.y[:, None], -math.inf)
    rival = others.max(dim=1).values
    gap = true - rival  # > 0 when correctly classified
    (grad,) = torch.autograd.grad(gap.sum(), x)
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return float((gap.detach() / norm).mean())


def input_gradient_norm(model: nn.Module, split: Split) -> float:
    x = split.x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), split.y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return float(grad.flatten(1).norm(dim=1).mean())


def group_accuracy_gap(model: nn.Module, split: Split) -> float:
    if split.s is None:
        return float("nan")
    with torch.no_grad():
        predicted = model(split.x).argmax(1).numpy()
    frame = MetricFrame(
        metrics=lambda y, p: float(np.mean(y == p)),
        y_true=split.y.numpy(),
        y_pred=predicted,
        sensitive_features=split.s.numpy(),
    )
    return float(frame.difference())


def capacity(model: nn.Module) -> float:
    """Non-zero trainable parameters: a pruned unit's zeroed weights no longer count (M1)."""
    return float(sum(int(p.count_nonzero()) for p in model.parameters() if p.requires_grad))


def probe_factors(served: nn.Module, env: Environment) -> dict[str, float]:
    """The probes of PROBES that apply: on the weights behind `served`, the groups' gap on
    `served` itself (module docstring)."""
    model = weights_of(served)
    was_training = model.training
    model.eval()
    try:
        members = _sample(env.members, env.seed, "members")
        test = _sample(env.dataset.test, env.seed, "test")
        with torch.random.fork_rng(devices=[]):
            readings = {
                "generalization_gap": _mean_loss(model, test) - _mean_loss(model, members),
                "boundary_distance": boundary_distance(model, members),
                "input_gradient_norm": input_gradient_norm(model, test),
                "group_accuracy_gap": group_accuracy_gap(served, env.dataset.test),
                "parameters": capacity(model),
            }
        return {name: value for name, value in readings.items() if not math.isnan(value)}
    finally:
        model.train(was_training)
