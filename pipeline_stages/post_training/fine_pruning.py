"""Fine-Pruning: prune units dormant on clean data, then fine-tune on clean data (Liu,
Dolan-Gavitt, Garg, RAID 2018).

Mechanism (the paper's). A backdoor lives in units that clean inputs leave dormant and the
trigger activates. The defender, holding a small clean set, records each unit's mean activation
on it in the network's last convolutional layer (the last hidden layer of an MLP, which has no
convolution), prunes units in increasing order of that activation until the clean accuracy has
fallen by more than `accuracy_budget` (the unit that crosses it is restored, and pruning stops),
then fine-tunes the pruned network on the same clean set. Pruning alone is evaded by an attacker
who hides the backdoor in units clean data also uses (the paper's pruning-aware attack); the
fine-tuning then moves the remaining units' weights away from the trigger, and restores the
accuracy pruning cost.

The fine-tuning's learning rate. The fine-tuning is brief (a few hundred SGD steps with
momentum 0.9 on the defender's clean set), so its rate decides whether the remaining units move
at all. At 0.01 they barely moved on the small image network of the quick profile and the
backdoor survived on Fashion-MNIST; at 0.05 the trigger's weights move and clean accuracy stays
within the pruning's own `accuracy_budget`. The default was chosen measuring the defense alone and confirmed on a second,
disjoint seed set and on the tabular set (benchmarks/results/effective_alone/table.md).

How it differs from the project's other backdoor defenses:
- `backdoor_pruning` (Zheng et al. 2022) scores units by how differently they fire on the
  *training* data than on clean data (KL of the two activation Gaussians) in every hidden layer,
  and only prunes: it needs the poisoned training split and changes no weight but the pruned
  ones. Fine-pruning reads clean data only (it needs no training data: an owner who bought a
  model can run it), looks at one layer, selects by dormancy, and retrains every parameter.
- `backdoor_finetuning` (Min et al. 2023) is an in-training phase that re-initialises the head
  and fine-tunes at a high learning rate with a feature-shift penalty; fine-pruning keeps the
  head, fine-tunes at a low rate, and relies on the pruning to remove the trigger's units first.

Pruning is masking: the pruned units' input columns of the layer reading them (the first linear
layer after the last convolution, or the head of an MLP) are set to zero, and their gradients are
masked while fine-tuning, so they stay zero and the model keeps its architecture (a plain state
dict). The clean set is `Environment.attacker_data`, the held-out half of the validation split
that `backdoor_finetuning` uses for the same reason: the other half must stay unseen by the model
(membership and dataset inference calibrate on it as non-members).

Effectiveness: the attack success rate of the active poisoner (or the dataset's default
BadNets), measured as the other backdoor defenses measure it.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from defcon.engine.attacks import BadNets
from defcon.engine.data import Dataset
from defcon.engine.defense import DefenseConfig, Environment, PostTrainingDefense, weights_of
from defcon.engine.devices import device_of
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError
from pipeline_stages.post_training.backdoor_pruning import core_model


class FinePruningConfig(DefenseConfig):
    """Settings of fine-pruning."""

    accuracy_budget: float = Field(
        default=0.04,
        ge=0,
        le=1,
        description="pruning stops before clean accuracy falls by more than this",
    )
    epochs: int | None = Field(
        default=None, ge=1, description="fine-tuning epochs (None: profile.finetune_epochs)"
    )
    min_steps: int = Field(
        default=100, ge=0, description="more epochs when the clean set is too small for this"
    )
    lr: float = Field(
        default=0.05,
        gt=0,
        description="SGD learning rate of the fine-tuning (see the module docstring for why)",
    )
    momentum: float = Field(default=0.9, ge=0, lt=1)
    batch_size: int = Field(default=64, ge=2)


def pruned_layer(core: nn.Module) -> tuple[nn.Linear, int]:
    """The linear layer reading the units fine-pruning prunes, and how many input columns one
    unit has: after the last convolution, a channel is its flattened positions; without one,
    a unit of the last hidden layer is the head's column."""
    modules = list(core.features)
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if not convs:
        return core.head, 1
    channels = modules[convs[-1]].out_channels
    after = [m for m in modules[convs[-1] :] if isinstance(m, nn.Linear)] + [core.head]
    layer = after[0]
    if layer.in_features % channels:
        raise DefconError(
            f"fine_pruning: the linear layer after the last convolution reads "
            f"{layer.in_features} inputs, not a whole number per channel ({channels} channels)"
        )
    return layer, layer.in_features // channels


@torch.no_grad()
def layer_input(net: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `layer` receives (flattened) when `net` reads `x`, in eval mode, on the CPU."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().reshape(len(args[0]), -1).cpu())
    )
    net.eval()
    device = device_of(net)  # `net` may be without the device boundary of the served model
    try:
        for chunk in x.split(1024):
            net(chunk.to(device))
    finally:
        handle.remove()
    return torch.cat(seen)


class FinePruning(PostTrainingDefense):
    """Prune the units dormant on clean data, then fine-tune on clean data."""

    Config: ClassVar[type[DefenseConfig]] = FinePruningConfig
    config: FinePruningConfig

    def __init__(self, config: FinePruningConfig | dict | None = None, **bound: Any) -> None:
        super().__init__(config, **bound)  # bound: the spec, see Defense
        self.last_pruned = 0  # informational: units pruned by the last apply

    def model_problem(self, model: nn.Module, dataset: Dataset) -> str | None:
        """Units are read between `features` and `head`: other layouts are refused."""
        try:
            pruned_layer(core_model(model))
        except DefconError as error:
            return str(error).replace("backdoor_pruning", self.name)
        return None

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """A pruned and fine-tuned copy of `model` (serving wrappers kept, weights changed)."""
        pruned = copy.deepcopy(model)
        net = weights_of(pruned)  # the weights, behind any prediction API another defense added
        layer, group = pruned_layer(core_model(net))
        clean = env.attacker_data
        mask = self.prune(net, layer, group, clean.x, clean.y)
        self.finetune(net, layer, mask, env)
        self.last_pruned = int((mask == 0).sum()) // group
        env.record[f"{self.name}.acted.pruned_units"] = float(
            self.last_pruned
        )  # defcon.planning.notices
        return pruned

    def prune(
        self, net: nn.Module, layer: nn.Linear, group: int, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Zero the dormant units' columns of `layer`, least active first, while clean accuracy
        stays within the budget; the column mask (1 kept, 0 pruned)."""
        inputs = layer_input(net, layer, x)
        activity = inputs.reshape(len(inputs), -1, group).mean(dim=(0, 2))
        units = len(activity)
        suffix = self._suffix(core_model(net), layer)
        cached = inputs.to(device_of(layer))

        @torch.no_grad()
        def accuracy() -> float:
            return float((suffix(cached).argmax(1).cpu() == y).float().mean())

        baseline = accuracy()
        mask = torch.ones(layer.in_features)
        for unit in torch.argsort(activity, stable=True)[: units - 1].tolist():
            columns = slice(unit * group, (unit + 1) * group)
            with torch.no_grad():
                saved = layer.weight[:, columns].clone()
                layer.weight[:, columns] = 0.0
            if baseline - accuracy() > self.config.accuracy_budget:
                with torch.no_grad():
                    layer.weight[:, columns] = saved
                break
            mask[columns] = 0.0
        return mask

    @staticmethod
    def _suffix(core: nn.Module, layer: nn.Linear) -> nn.Module:
        """The part of `core` from `layer` to the logits."""
        if layer is core.head:
            return layer
        start = next(i for i, m in enumerate(core.features) if m is layer)
        return nn.Sequential(core.features[start:], core.head)

    def finetune(
        self, net: nn.Module, layer: nn.Linear, mask: torch.Tensor, env: Environment
    ) -> None:
        """Fine-tune every parameter of `net` on the defender's clean set; pruned columns get no
        gradient, so (with zero momentum and weight decay on zero) they stay pruned."""
        cfg = self.config
        clean = env.attacker_data
        seed = derived_seed(env.seed, self.name)
        loader = clean.loader(cfg.batch_size, shuffle=True, seed=seed)
        epochs = max(
            cfg.epochs or env.profile.finetune_epochs, math.ceil(cfg.min_steps / len(loader))
        )
        device = device_of(net)
        weight_mask = mask.to(layer.weight.device)
        handle = layer.weight.register_hook(lambda grad: grad * weight_mask)
        optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        net.train()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for _ in range(epochs):
                    for x, y, _s in loader:
                        optimizer.zero_grad(set_to_none=True)
                        logits = net(x.to(device))
                        F.cross_entropy(logits, y.to(logits.device)).backward()
                        optimizer.step()
        finally:
            handle.remove()
            net.eval()
        with torch.no_grad():
            layer.weight.mul_(weight_mask)

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Attack success rate of the scenario's poisoner (or the default BadNets) on test data."""
        poisoner = env.poisoner or BadNets.for_dataset(env.dataset, env.seed)
        return {"attack_success_rate": poisoner.attack_success_rate(model, env.dataset.test)}
