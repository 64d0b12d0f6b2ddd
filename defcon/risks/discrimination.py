"""Discrimination (SoK F): fairlearn's equalized-odds and demographic-parity differences.

Hardt, Price, Srebro, "Equality of Opportunity in Supervised Learning", NeurIPS 2016; Bird et al.,
"Fairlearn", Microsoft 2020. Read on the served model's hard predictions on the test split, the
sensitive groups `test.s` being the sensitive feature and class 1 the favourable outcome.
"""

from __future__ import annotations

from typing import ClassVar

from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from torch import nn

from defcon.engine.data import Dataset
from defcon.engine.defense import Environment
from defcon.engine.models import predict
from defcon.risks.base import Lab, RiskAttack, RiskMetric, needs_sensitive_attribute
from defcon.vocabulary import Direction, Risk


class Discrimination(RiskAttack):
    risk: ClassVar[Risk] = Risk.DISCRIMINATION
    reference: ClassVar[str] = (
        "Hardt, Price, Srebro, Equality of Opportunity in Supervised Learning, NeurIPS 2016; fairlearn (Bird et al., 2020)"
    )
    metrics: ClassVar[tuple[RiskMetric, ...]] = (
        RiskMetric(
            name="equalized_odds_difference", riskier=Direction.HIGHER, min_effect=0.02,
            description="larger of the TPR and FPR gaps between the sensitive groups (test)",
        ),
        RiskMetric(
            name="demographic_parity_difference", riskier=Direction.HIGHER, primary=False, min_effect=0.02,
            description="gap in the rate of favourable predictions between the groups (test)",
        ),
    )  # fmt: skip

    def refusal(self, dataset: Dataset) -> str | None:
        problem = needs_sensitive_attribute(dataset)
        if problem is None and dataset.num_classes != 2:
            problem = f"group rates need a binary task, and {dataset.name} has {dataset.num_classes} classes"
        return problem

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        test = env.dataset.test
        favourable = (predict(model, test.x) == 1).numpy()
        truth, groups = (test.y == 1).numpy(), test.s.numpy()
        return {
            "equalized_odds_difference": float(
                equalized_odds_difference(truth, favourable, sensitive_features=groups)
            ),
            "demographic_parity_difference": float(
                demographic_parity_difference(truth, favourable, sensitive_features=groups)
            ),
        }
