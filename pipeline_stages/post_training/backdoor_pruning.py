"""Backdoor-neuron pruning by pre-activation statistics (Zheng et al., NeurIPS 2022).

Mechanism. Zheng et al. ("Pre-activation Distributions Expose Backdoor Neurons") observe that on
the (poisoned) training data a backdoor neuron's activation is a mixture of the clean component
and a shifted component produced by the triggered samples, while on clean data only the clean
component remains. Their BN-based pruning (BNP) therefore scores every neuron by the KL
divergence between the Gaussian fitted to its training-data statistics (what BatchNorm's running
mean/variance store) and the Gaussian fitted on clean data, and prunes the neurons whose score is
an outlier (``score > median + u · spread``).

What we do, and why it differs slightly:
- The training-data moments are computed by a forward pass over the training split the model was
  trained on (``env.training_split``: poisoned when a poisoner is active) instead of being read
  from BatchNorm buffers. This is exactly what the buffers approximate, and it also works for
  GroupNorm models (DP-SGD's Opacus fix), which keep no running statistics, and for hidden
  layers without normalisation.
- The units are the hidden units feeding each linear layer of the model: the flattened output of
  the last conv block (channel × position, after pooling) and the penultimate representation (and,
  on the MLP, the first hidden layer). Scoring channel × position units instead of whole channels
  lets a localised trigger patch show up instead of being averaged away over the image; pruning
  them is zeroing the corresponding input columns of the next linear layer, so the pruned model
  keeps its architecture and loads from a plain state dict.
- The clean statistics come from the validation split. Scores are turned into robust z-scores per
  layer (median / MAD); units with z ≥ ``outlier_z`` are candidates, most suspicious first.
- How many to prune is decided on validation data only: candidates are pruned greedily and a
  candidate is kept pruned only while clean validation accuracy stays within ``accuracy_budget``
  of the unpruned model's (a candidate that would exceed it is restored and skipped).

We chose this over Fine-Pruning (Liu et al. 2018, prune units dormant on clean data): in our
trials on digits the KL score reduced the attack success rate much more per pruned unit, because
dormant units are often merely redundant while the KL score points at the units the poisoned
training samples actually drive. Pruning without fine-tuning is weaker on small GroupNorm models
(the backdoor is spread over many units there); see the tests and the report.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from defcon.engine.attacks import BadNets
from defcon.engine.data import Dataset
from defcon.engine.defense import DefenseConfig, Environment, PostTrainingDefense
from defcon.engine.devices import device_of
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError


class BackdoorPruningConfig(DefenseConfig):
    """Settings of backdoor-neuron pruning."""

    accuracy_budget: float = Field(
        default=0.03, ge=0, le=1, description="largest tolerated drop of clean validation accuracy"
    )
    outlier_z: float = Field(
        default=3.0,
        ge=0,
        description="robust z-score of the KL score above which a unit is a candidate",
    )
    max_train_samples: int = Field(
        default=5000, ge=100, description="training samples used for the training-data statistics"
    )


def core_model(model: nn.Module) -> nn.Module:
    """The innermost module exposing `features` (nn.Sequential) and `head` (nn.Linear).

    Walks the modules, so it finds the network inside a wrapper added by another post-training
    defense (an output watermark, an explanation API).
    """
    for module in model.modules():
        features = getattr(module, "features", None)
        head = getattr(module, "head", None)
        if isinstance(features, nn.Sequential) and isinstance(head, nn.Linear):
            return module
    raise DefconError(
        f"backdoor_pruning needs a model with a `features` nn.Sequential and a `head` nn.Linear "
        f"(defcon's SmallCNN / MLP); got {type(model).__name__}"
    )


def _target_layers(core: nn.Module) -> list[nn.Linear]:
    """Linear layers whose inputs are hidden units: those in `features` after its first module,
    then the head. (A Linear at position 0 reads the raw input, which is not pruned.)"""
    layers = [m for i, m in enumerate(core.features) if i > 0 and isinstance(m, nn.Linear)]
    return [*layers, core.head]


@torch.no_grad()
def _layer_inputs(core: nn.Module, layers: list[nn.Linear], x: torch.Tensor) -> list[torch.Tensor]:
    """The inputs each layer receives (flattened hidden units) on `x`, in eval mode."""
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    handles = [
        layer.register_forward_pre_hook(
            lambda _m, args, i=i: seen[i].append(args[0].detach().reshape(len(args[0]), -1).cpu())
        )
        for i, layer in enumerate(layers)
    ]
    core.eval()
    try:
        for chunk in x.split(1024):
            core(chunk)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(seen[i]) for i in range(len(layers))]


def kl_scores(train_acts: torch.Tensor, clean_acts: torch.Tensor) -> torch.Tensor:
    """Per unit, KL( N(μ_train, σ²_train) ‖ N(μ_clean, σ²_clean) ) (BNP's statistic).

    Standard deviations are floored at 5% of the layer's median clean standard deviation (over
    live units), so a nearly constant unit does not get an arbitrary score. Dead units (exactly
    constant on both sets, e.g. a ReLU that never fires) carry nothing and score NaN.
    """
    mean_t, std_t = train_acts.mean(0), train_acts.std(0)
    mean_c, std_c = clean_acts.mean(0), clean_acts.std(0)
    live = (std_t > 0) | (std_c > 0)
    reference = float(std_c[live].median()) if bool(live.any()) else 1.0
    floor = 0.05 * max(reference, 1e-3)
    std_t, std_c = std_t.clamp(min=floor), std_c.clamp(min=floor)
    kl = torch.log(std_c / std_t) + (std_t**2 + (mean_t - mean_c) ** 2) / (2 * std_c**2) - 0.5
    return torch.where(live, kl, torch.nan)


def robust_z(scores: torch.Tensor) -> torch.Tensor:
    """(score − median) / MAD over the scored units: how far each unit is out of its layer's
    bulk (−inf for unscored units)."""
    finite = scores[~scores.isnan()]
    if len(finite) == 0:
        return torch.full_like(scores, -torch.inf)
    median = finite.median()
    mad = (finite - median).abs().median().clamp(min=1e-8)
    return torch.where(scores.isnan(), -torch.inf, (scores - median) / mad)


class BackdoorPruning(PostTrainingDefense):
    """Prune hidden units whose training-data activation statistics deviate from clean data."""

    Config: ClassVar[type[DefenseConfig]] = BackdoorPruningConfig

    config: BackdoorPruningConfig

    def __init__(self, config: BackdoorPruningConfig | dict | None = None, **bound: Any) -> None:
        super().__init__(config, **bound)  # bound: the spec, see Defense
        self.last_pruned: dict[str, int] = {}  # informational: units pruned per layer by apply

    def model_problem(self, model: nn.Module, dataset: Dataset) -> str | None:
        """Pruning reads hidden units between `features` and `head`: other layouts are refused."""
        try:
            core_model(model)
        except DefconError as error:
            return str(error)
        return None

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """A copy of `model` with the suspicious units' outgoing weights set to zero."""
        cfg = self.config
        pruned = copy.deepcopy(model)
        pruned.eval()
        core = core_model(pruned)
        layers = _target_layers(core)
        train = env.training_split
        if len(train) > cfg.max_train_samples:
            rng = np.random.default_rng(derived_seed(env.seed, "backdoor_pruning:sample"))
            train = train.subset(
                np.sort(rng.choice(len(train), cfg.max_train_samples, replace=False))
            )
        val = env.dataset.val
        train_acts = _layer_inputs(core, layers, train.x)
        val_acts = _layer_inputs(core, layers, val.x)

        candidates: list[tuple[float, int, int]] = []
        for index, (acts_t, acts_c) in enumerate(zip(train_acts, val_acts, strict=True)):
            z = robust_z(kl_scores(acts_t, acts_c))
            candidates += [
                (float(z[u]), index, u) for u in torch.nonzero(z >= cfg.outlier_z).flatten()
            ]
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))

        # Clean validation accuracy from the cached input of the first pruned layer onwards:
        # pruning only changes weights from there on, so the prefix need not be recomputed.
        first = (
            next(i for i, m in enumerate(core.features) if m is layers[0])
            if layers[0] is not core.head
            else None
        )
        suffix = core.features[first:] if first is not None else nn.Identity()
        cached = val_acts[0].to(device_of(core))  # inner layers compute where the model lives

        @torch.no_grad()
        def val_accuracy() -> float:
            return float((core.head(suffix(cached)).argmax(1).cpu() == val.y).float().mean())

        baseline = val_accuracy()
        counts = [0] * len(layers)
        for _z, index, unit in candidates:
            weight = layers[index].weight
            with torch.no_grad():
                saved = weight[:, unit].clone()
                weight[:, unit] = 0.0
            if baseline - val_accuracy() > cfg.accuracy_budget:
                with torch.no_grad():
                    weight[:, unit] = saved
            else:
                counts[index] += 1
        names = {id(m): n for n, m in core.named_modules()}
        self.last_pruned = {
            names[id(layer)]: count for layer, count in zip(layers, counts, strict=True)
        }
        env.record[f"{self.name}.acted.pruned_units"] = float(
            sum(counts)
        )  # defcon.planning.notices
        return pruned

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Attack success rate of the scenario's poisoner (or the default BadNets) on test data."""
        poisoner = env.poisoner or BadNets.for_dataset(env.dataset, env.seed)
        return {"attack_success_rate": poisoner.attack_success_rate(model, env.dataset.test)}
