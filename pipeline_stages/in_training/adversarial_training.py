"""Adversarial training: train on worst-case perturbed inputs so that small input changes cannot
flip the prediction (mitigates evasion).

Two methods:

- ``pgd`` (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR
  2018) fills the *batch_transform* slot (the quick profile trains with 2 steps that add up to
  1.25·ε from a random start, Wong, Rice, Kolter, "Fast is better than free", ICLR 2020; on
  Fashion-MNIST this is as robust under the 10-step measuring attack as 5 steps of 0.5·ε, with
  2 instead of 5 attack passes per batch): a share of every training batch (``adv_fraction``) is
  replaced by L∞ PGD adversarial examples of the same samples (torchattacks), the rest stays
  clean. Replacing rather than appending keeps one training example per sampled record, so a
  privacy wrapper's per-sample clipping and accounting (DP-SGD) stay valid.
- ``trades`` (Zhang et al., "Theoretically Principled Trade-off between Robustness and
  Accuracy", ICML 2019) minimises CE(f(x), y) + β·KL(f(x) ‖ f(x')), where x' maximises the KL
  term inside the L∞ ball (torchattacks' TPGD). The loop already adds the clean cross-entropy,
  so TRADES fills the *loss_term* slot with the β·KL term; it generates x' inside that hook with
  the privacy hooks disabled (the loop only disables them around batch transforms), then runs
  the forward pass on x' with the hooks on, so Opacus' per-sample gradients cover the whole
  TRADES loss of each sample. The spec therefore declares both slots; each method leaves the
  other hook a no-op. loss_term is not exclusive, so this adds no structural clash.

Effectiveness: class-balanced robust accuracy (the mean over classes of the share of a class's
test inputs still classified correctly) on (a seeded subset of) the test split under an L∞ PGD
attack with random start, ``eval_attack_steps`` steps from the profile and the same ε as
training. Balanced, so that the metric can fail: on Adult (76 % one class) a constant predictor
has a plain robust accuracy of 0.76, above most attacked models; its balanced value is 0.5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from defcon.engine import optional
from defcon.engine.attacks import robust_correct
from defcon.engine.data import class_balanced_mean
from defcon.engine.defense import DefenseConfig, Environment, InTrainingDefense
from defcon.engine.devices import run_attack
from defcon.engine.seeds import derived_seed
from defcon.vocabulary import DataKind

if TYPE_CHECKING:
    from defcon.engine.training import TrainingRun

DEFAULT_EPS = {DataKind.IMAGE: 0.1, DataKind.TABULAR: 0.05}


class AdversarialTrainingConfig(DefenseConfig):
    """Settings of adversarial training; None means "derive from the data kind / profile"."""

    method: Literal["pgd", "trades"] = "pgd"
    eps: float | None = Field(
        default=None, gt=0, le=1, description="L∞ radius; None: 0.1 on images, 0.05 on tabular"
    )
    steps: int | None = Field(default=None, ge=1, description="None: profile.attack_steps")
    alpha_factor: float = Field(
        default=2.5, gt=0, description="measuring attack: step size = factor·eps/steps (Madry)"
    )
    train_alpha_factor: float = Field(
        default=1.25,
        gt=0,
        description="training attack: step size = factor·eps/steps; with few steps (quick "
        "profile: 2) the steps add up to 1.25·eps from a random start, Wong et al.'s FGSM-RS step",
    )
    adv_fraction: float = Field(
        default=0.5, gt=0, le=1, description="pgd: share of each batch replaced by adversarial"
    )
    trades_beta: float = Field(default=6.0, ge=0, description="trades: weight of the KL term")
    eval_steps: int | None = Field(default=None, ge=1, description="None: eval_attack_steps")
    eval_samples: int = Field(default=1000, ge=1, description="test inputs attacked by measure")


class AdversarialTraining(InTrainingDefense):
    """PGD (or TRADES) adversarial training, measured by robust accuracy under L∞ PGD."""

    Config: ClassVar[type[DefenseConfig]] = AdversarialTrainingConfig
    config: AdversarialTrainingConfig
    requires: ClassVar[tuple[str, ...]] = (optional.TORCHATTACKS,)

    # ------------------------------------------------------------------ settings

    def eps_for(self, env: Environment) -> float:
        """The L∞ radius used for training and measuring on `env`'s data."""
        return self.config.eps if self.config.eps is not None else DEFAULT_EPS[env.dataset.kind]

    def _alpha(self, eps: float, steps: int, *, training: bool = False) -> float:
        factor = self.config.train_alpha_factor if training else self.config.alpha_factor
        return factor * eps / steps

    # ------------------------------------------------------------------ training hooks

    def transform_batch(
        self, run: TrainingRun, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pgd: replace the first `adv_fraction` of the (shuffled) batch by PGD examples."""
        if self.config.method != "pgd":
            return x, y, s
        count = max(1, round(self.config.adv_fraction * len(y)))
        eps = self.eps_for(run.env)
        steps = self.config.steps or run.env.profile.attack_steps
        model = run.plain_model  # the loop runs this hook with privacy hooks disabled
        attack = optional.torchattacks("adversarial_training").PGD(
            model, eps=eps, alpha=self._alpha(eps, steps, training=True), steps=steps,
            random_start=True,
        )  # fmt: skip
        x_adv = run_attack(attack, model, x[:count], y[:count]).detach()
        return torch.cat([x_adv, x[count:]]), y, s

    def loss_term(
        self,
        run: TrainingRun,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        """trades: β·KL(f(x) ‖ f(x')) with x' from TPGD (the loop adds CE(f(x), y) itself)."""
        if self.config.method != "trades" or self.config.trades_beta == 0:
            return logits.new_zeros(())
        eps = self.eps_for(run.env)
        steps = self.config.steps or run.env.profile.attack_steps
        with run.hooks_disabled() as model:
            alpha = self._alpha(eps, steps, training=True)
            attack = optional.torchattacks("adversarial_training").TPGD(
                model, eps=eps, alpha=alpha, steps=steps
            )
            x_adv = run_attack(attack, model, x).detach()
        adv_logits = run.model(x_adv)  # through the wrapper: per-sample gradients see this term
        kl = F.kl_div(
            F.log_softmax(adv_logits, dim=1), F.softmax(logits, dim=1), reduction="none"
        ).sum(dim=1)
        return self.config.trades_beta * kl.mean()

    # ------------------------------------------------------------------ effectiveness

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Robust accuracy under PGD and AutoAttack (worst case per input) on a seeded subset."""
        return {"robust_accuracy": self.robust_accuracy(model, env)}

    def robust_accuracy(self, model: nn.Module, env: Environment) -> float:
        test = env.dataset.test.seeded_sample(
            self.config.eval_samples, derived_seed(env.seed, self.name)
        )
        if len(test.y) == 0:
            return float("nan")
        eps = self.eps_for(env)
        steps = self.config.eval_steps or env.profile.eval_attack_steps
        correct = robust_correct(
            model, test.x, test.y, eps,
            num_classes=env.dataset.num_classes,
            seed=derived_seed(env.seed, f"{self.name}:eval"),
            pgd_steps=steps,
            pgd_alpha=self._alpha(eps, steps),
            autoattack_steps=env.profile.autoattack_steps,
        )  # fmt: skip
        return class_balanced_mean(correct, test.y)
