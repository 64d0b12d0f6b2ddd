"""Clean fine-tuning against backdoors, with a re-initialised head and a feature-shift penalty.

A BadNets-style poisoner (Gu et al. 2017) has stamped a trigger on part of the training data and
relabelled it, so the trained model maps triggered inputs to the attacker's target class. The
defender holds a small clean set (half of the validation split, or a share of it) and, after the main
training loop (the *finetune_phase* slot), fine-tunes the model on it:

- the linear head is re-initialised (seeded), so the trigger → target mapping stored in the head
  is wiped, and the whole network is fine-tuned with a comparatively high learning rate (SGD
  with momentum, cosine-annealed, for the profile's ``finetune_epochs`` but at least
  ``min_steps`` steps, so that a small clean set still gets enough updates). Plain low-LR
  fine-tuning barely moves a backdoor (Liu et al., "Fine-Pruning", RAID 2018); re-initialising
  the head and fine-tuning all layers with a large LR does (Min et al., "Towards Stable Backdoor
  Purification through Feature Shift Tuning", NeurIPS 2023; Sha et al., "Fine-tuning Is All You
  Need to Mitigate Backdoor Attacks", 2022);
- Feature Shift Tuning (FST, Min et al. 2023): the loss adds ``shift_weight·⟨w, w₀⟩`` where w is
  the new head's weight and w₀ the poisoned model's head weight, and w is projected back onto
  the sphere of w₀'s norm after every step. Pushing the new head away from the old one forces the
  features to shift away from the backdoor-bearing ones instead of re-using them.

Effectiveness: the attack success rate of the active poisoner (``env.poisoner``, or the default
BadNets adversary of the dataset) on the triggered test inputs whose true class is not the
target. Clean accuracy is reported beside it by the composer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from defcon.engine.attacks import BadNets
from defcon.engine.data import Split
from defcon.engine.defense import DefenseConfig, Environment, InTrainingDefense
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError

if TYPE_CHECKING:
    from defcon.engine.training import TrainingRun


class BackdoorFinetuningConfig(DefenseConfig):
    """Settings of the clean fine-tuning phase."""

    clean_fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="share of the held-out clean half of the validation split the defender holds",
    )
    epochs: int | None = Field(default=None, ge=1, description="None: profile.finetune_epochs")
    min_steps: int = Field(
        default=150, ge=0, description="more epochs when the clean set is too small for this"
    )
    lr: float = Field(default=0.02, gt=0, description="peak SGD learning rate (cosine-annealed)")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    batch_size: int = Field(default=32, ge=1)
    reinit_head: bool = Field(default=True, description="re-initialise the linear head first")
    layers: Literal["all", "head"] = Field(default="all", description="what is fine-tuned")
    shift_weight: float = Field(
        default=0.2, ge=0, description="FST penalty weight on ⟨w, w_poisoned⟩ (0: plain FT)"
    )


class BackdoorFinetuning(InTrainingDefense):
    """Re-initialise the head and fine-tune on clean data; measured by the poisoner's ASR."""

    Config: ClassVar[type[DefenseConfig]] = BackdoorFinetuningConfig
    config: BackdoorFinetuningConfig

    # ------------------------------------------------------------------ the defender's data

    def clean_data(self, env: Environment) -> Split:
        """The defender's clean set: a seeded share (`clean_fraction`) of the held-out half of the
        validation split that no check treats as unseen (`env.attacker_data`: clean population
        data, disjoint from the training data). The other half, `env.calibration_data`, must stay
        unseen by the served model: membership and dataset inference calibrate on it as
        non-members, and fine-tuning on it would break them by construction, not by interaction.
        """
        val = env.attacker_data
        if self.config.clean_fraction >= 1:
            return val
        count = max(1, round(self.config.clean_fraction * len(val)))
        rng = np.random.default_rng(derived_seed(env.seed, f"{self.name}:clean"))
        return val.subset(np.sort(rng.permutation(len(val))[:count]))

    # ------------------------------------------------------------------ finetune_phase

    def finetune(self, run: TrainingRun) -> None:
        """Fine-tune run.model (the run's own plain model, after the main loop) on clean data."""
        env = run.env
        model = run.model
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise DefconError(
                f"{self.name} needs a model whose last layer is a linear 'head' (defcon's "
                f"SmallCNN/MLP); got {type(model).__name__}"
            )
        clean = self.clean_data(env)
        epochs = self.config.epochs or env.profile.finetune_epochs
        seed = derived_seed(env.seed, self.name)
        old_weight = head.weight.detach().clone()
        if self.config.reinit_head:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                head.reset_parameters()
            if self.config.shift_weight > 0:
                # FST starts from the old norm; the projection below keeps it there.
                with torch.no_grad():
                    head.weight.mul_(old_weight.norm() / head.weight.norm().clamp_min(1e-12))
        params = (
            list(model.parameters()) if self.config.layers == "all" else list(head.parameters())
        )
        optimizer = torch.optim.SGD(
            params,
            lr=self.config.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )
        loader = clean.loader(self.config.batch_size, shuffle=True, seed=seed)
        epochs = max(epochs, math.ceil(self.config.min_steps / len(loader)))
        total = max(1, epochs * len(loader))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
        )
        if self.config.layers == "head":
            model.eval()  # features frozen: keep their normalisation statistics too
        else:
            model.train()
        for _ in range(epochs):
            for x, y, _s in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                if self.config.shift_weight > 0:
                    loss = loss + self.config.shift_weight * (head.weight * old_weight).sum()
                loss.backward()
                optimizer.step()
                schedule.step()
                if self.config.shift_weight > 0:
                    with torch.no_grad():
                        head.weight.mul_(old_weight.norm() / head.weight.norm().clamp_min(1e-12))
        model.eval()
        run.record[f"{self.name}.clean_samples"] = float(len(clean))
        run.record[f"{self.name}.epochs"] = float(epochs)

    # ------------------------------------------------------------------ effectiveness

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """ASR of the active poisoner (or the dataset's default BadNets) on the test split."""
        poisoner = env.poisoner or BadNets.for_dataset(env.dataset, env.seed)
        return {"attack_success_rate": poisoner.attack_success_rate(model, env.dataset.test)}
