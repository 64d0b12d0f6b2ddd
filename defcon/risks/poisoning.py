"""Poisoning (SoK R2): BadNets attack success rate, the poisoner training with the model.

Gu, Dolan-Gavitt, Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain", 2017. The poisoner (`defcon.engine.attacks.BadNets`: 10 % of the training rows stamped
with a valid trigger and relabelled to the target) is part of the training scenario, so the audit
builds every arm of this risk under it; the metric is the share of stamped test inputs of
other classes that the served model assigns to the target.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from defcon.engine.defense import Environment
from defcon.errors import DefconError
from defcon.risks.base import Lab, RiskAttack, RiskMetric
from defcon.vocabulary import Direction, Risk


class Poisoning(RiskAttack):
    risk: ClassVar[Risk] = Risk.POISONING
    reference: ClassVar[str] = (
        "Gu, Dolan-Gavitt, Garg, BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain, 2017"
    )
    metrics: ClassVar[tuple[RiskMetric, ...]] = (
        RiskMetric(
            name="attack_success_rate", riskier=Direction.HIGHER, min_effect=0.05,
            description="share of triggered test inputs (true class ≠ target) sent to the target",
        ),
    )  # fmt: skip
    poisoned: ClassVar[bool] = True

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        if env.poisoner is None:
            raise DefconError(
                "poisoning is measured on a model trained under the BadNets poisoner; this "
                "environment has none"
            )
        return {"attack_success_rate": env.poisoner.attack_success_rate(model, env.dataset.test)}
