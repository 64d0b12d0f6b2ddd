"""Membership inference (SoK P1): offline RMIA, AUC and TPR at 0.1 % and 1 % FPR.

Zarifzadeh, Liu, Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024, via
`defcon.engine.rmia` (the same implementation as `dp_sgd`'s metric), with the profile's reference
models trained on halves of the attacker's population data (`env.population_models()`, cached
per seed). Members are the clean original training records once each (`env.members`),
non-members the test split, equally many of each; thresholds are set on validation records
neither the target nor any reference saw (`env.calibration_data`), never on test data.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field
from torch import nn

from defcon.engine.data import Split
from defcon.engine.defense import Environment
from defcon.engine.rmia import rmia_attack
from defcon.engine.seeds import derived_seed
from defcon.risks.base import AttackConfig, Lab, RiskAttack, RiskMetric
from defcon.vocabulary import Direction, Risk


class MembershipConfig(AttackConfig):
    samples: int = Field(default=2000, ge=10, description="cap per side (members, non-members)")
    fpr: float = Field(default=0.01, gt=0, lt=1, description="FPR of the calibrated threshold")


def balanced(inside: Split, outside: Split, cap: int, seed: int) -> tuple[Split, Split]:
    """Equally many rows of each (at most `cap`), seeded random subsets."""
    rng = np.random.default_rng(seed)
    size = min(len(inside), len(outside), cap)
    return (
        inside.subset(np.sort(rng.permutation(len(inside))[:size])),
        outside.subset(np.sort(rng.permutation(len(outside))[:size])),
    )


class MembershipInference(RiskAttack):
    risk: ClassVar[Risk] = Risk.MEMBERSHIP_INFERENCE
    reference: ClassVar[str] = (
        "Zarifzadeh, Liu, Shokri, Low-Cost High-Power Membership Inference Attacks, ICML 2024"
    )
    metrics: ClassVar[tuple[RiskMetric, ...]] = (
        RiskMetric(
            name="mia_auc", riskier=Direction.HIGHER, min_effect=0.02,
            description="ROC AUC of the calibrated score, training records vs test records",
        ),
        RiskMetric(
            name="mia_tpr_at_1_fpr", riskier=Direction.HIGHER, primary=False, min_effect=0.02,
            description="share of members above the threshold set to 1% FPR on validation data",
        ),
        RiskMetric(
            name="mia_tpr_at_0_1_fpr", riskier=Direction.HIGHER, primary=False, min_effect=0.02,
            description="share of members above the threshold set to 0.1% FPR on validation data",
        ),
    )  # fmt: skip
    Config = MembershipConfig
    config: MembershipConfig

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        members, others = balanced(
            env.members, env.dataset.test, self.config.samples, derived_seed(env.seed, "risk:mia")
        )
        reading = rmia_attack(
            model, env.population_models(), members, others, env.attacker_data,
            env.calibration_data,
        )  # fmt: skip
        return {
            "mia_auc": reading.auc,
            "mia_tpr_at_1_fpr": reading.tpr_at_1_fpr,
            "mia_tpr_at_0_1_fpr": reading.tpr_at_0_1_fpr,
        }
