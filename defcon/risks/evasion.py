"""Evasion (SoK R1): class-balanced robust accuracy under an L∞ PGD attack with random start.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018. The same
threat as `adversarial_training`'s metric (ε 0.1 on images, 0.05 on tabular data in [0, 1],
step 2.5·ε/steps, the profile's `eval_attack_steps`), so an audit and a composition read one
number. Class-balanced (the mean of per-class recalls), so a constant predictor scores
1/classes, not the majority share.

On image data, beside it: excessive invariance in the same ε-ball (`defcon.engine.invariance`; Tramèr
et al., ICML 2020) — the share of perturbations toward another class's training example that a
declared k-NN oracle proxy says change the true class, on which the model keeps its prediction,
and how many such perturbations were found. Robust accuracy rewards a model for not changing
its label; this reports where that is wrong. Not on tabular data (`defcon.engine.invariance`).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from defcon.engine import optional
from defcon.engine.attacks import robust_correct
from defcon.engine.data import Dataset, class_balanced_mean
from defcon.engine.defense import Environment
from defcon.engine.invariance import (
    INVARIANCE_ERROR,
    LABEL_CHANGING,
    InvarianceSettings,
    measure_invariance,
    not_applicable,
)
from defcon.engine.seeds import derived_seed
from defcon.risks.base import AttackConfig, Lab, RiskAttack, RiskMetric
from defcon.vocabulary import DataKind, Direction, Risk

EPS = {DataKind.IMAGE: 0.1, DataKind.TABULAR: 0.05}


class EvasionConfig(AttackConfig):
    eps: float | None = Field(default=None, gt=0, le=1, description="None: by data kind")
    steps: int | None = Field(default=None, ge=1, description="None: profile.eval_attack_steps")
    alpha_factor: float = Field(default=2.5, gt=0)
    samples: int = Field(default=1000, ge=1, description="test inputs attacked")
    invariance: InvarianceSettings = Field(default_factory=InvarianceSettings)


class Evasion(RiskAttack):
    risk: ClassVar[Risk] = Risk.EVASION
    reference: ClassVar[str] = (
        "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018"
    )
    metrics: ClassVar[tuple[RiskMetric, ...]] = (
        RiskMetric(
            name="robust_accuracy", riskier=Direction.LOWER, min_effect=0.05,
            description="class-balanced test accuracy under L∞ PGD (lower: more evasion)",
        ),
        RiskMetric(
            name=INVARIANCE_ERROR, riskier=Direction.HIGHER, primary=False, min_effect=0.05,
            description="share of label-changing perturbations in the same ε-ball (k-NN oracle "
            "proxy) on which the model keeps its prediction (images only)",
            undefined="no label-changing perturbation found in the ε-ball (n = 0): not measurable",
        ),
        RiskMetric(
            name=LABEL_CHANGING, riskier=None, primary=False,
            description="n: label-changing perturbations found (the same for every arm of a seed)",
        ),
    )  # fmt: skip
    Config = EvasionConfig
    config: EvasionConfig

    def refusal(self, dataset: Dataset) -> str | None:
        """Missing torchattacks: named before any training (skipped unless --risk evasion)."""
        return optional.missing_package(optional.TORCHATTACKS, "the evasion attack")

    def metrics_for(self, dataset: Dataset) -> tuple[RiskMetric, ...]:
        if not_applicable(dataset):
            return tuple(
                m for m in self.metrics if m.name not in (INVARIANCE_ERROR, LABEL_CHANGING)
            )
        return self.metrics

    def unreported(self, dataset: Dataset) -> dict[str, str]:
        reason = not_applicable(dataset)
        return {INVARIANCE_ERROR: reason} if reason else {}

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        eps = self.config.eps or EPS[env.dataset.kind]
        robust = self.robust_accuracy(model, env, eps)
        if not_applicable(env.dataset):
            return robust
        return {
            **robust,
            **measure_invariance(model, env.dataset, eps, env.seed, self.config.invariance),
        }

    def robust_accuracy(self, model: nn.Module, env: Environment, eps: float) -> dict[str, float]:
        test = env.dataset.test.seeded_sample(
            self.config.samples, derived_seed(env.seed, "risk:evasion")
        )
        steps = self.config.steps or env.profile.eval_attack_steps
        correct = robust_correct(
            model, test.x, test.y, eps,
            num_classes=env.dataset.num_classes,
            seed=derived_seed(env.seed, "risk:evasion:start"),
            pgd_steps=steps,
            pgd_alpha=self.config.alpha_factor * eps / steps,
            autoattack_steps=env.profile.autoattack_steps,
        )  # fmt: skip
        model.eval()
        return {"robust_accuracy": class_balanced_mean(correct, test.y)}
