"""Membership inference (SoK P1): a difficulty-calibrated loss attack, AUC and TPR at 1 % FPR.

Watson et al., "On the Importance of Difficulty Calibration in Membership Inference Attacks",
ICLR 2022; the offline LiRA of Carlini et al., "Membership Inference Attacks From First
Principles", IEEE S&P 2022. score(x) = ℓ_ref(x) − ℓ_target(x): how much better the target fits x
than an independent model of the same recipe that never saw it (`env.independent_model()`,
trained on the attacker's data), so easy examples do not pass for members. The same attack as
`dp_sgd`'s metric, which calls `calibrated_score` from here. Members are the clean original training records once each (`env.members`),
non-members the test split, equally many of each; the 1 %-FPR threshold is set on validation
records neither model saw (`env.calibration_data`), never on test data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from sklearn.metrics import roc_auc_score
from torch import nn

from defcon.attacks import derived_seed
from defcon.data import Split
from defcon.defense import Environment
from defcon.errors import DefconError
from defcon.risks.base import AttackConfig, Lab, RiskAttack, RiskMetric
from defcon.vocabulary import Direction, Risk


class MembershipConfig(AttackConfig):
    samples: int = Field(default=2000, ge=10, description="cap per side (members, non-members)")
    fpr: float = Field(default=0.01, gt=0, lt=1, description="FPR of the calibrated threshold")


def calibrated_score(
    target: nn.Module, reference: nn.Module, kind: str = "loss"
) -> Callable[[Split], torch.Tensor]:
    """score(split) per row: how much more the target fits x than the reference does.

    kind "logit": φ_target − φ_ref with φ = log(p_y/(1 − p_y)); kind "loss": ℓ_ref − ℓ_target.
    Both models are evaluated in eval mode (their modes are restored).
    """
    if kind not in {"logit", "loss"}:
        raise DefconError(f"unknown membership score {kind!r}; accepted: logit, loss")

    def per_row(model: nn.Module, split: Split) -> torch.Tensor:
        logit = true_class_logit(model, split)
        if kind == "logit":
            return logit
        return -torch.nn.functional.logsigmoid(logit)  # = cross-entropy −log p_y

    def score(split: Split) -> torch.Tensor:
        target_value, reference_value = per_row(target, split), per_row(reference, split)
        if kind == "logit":
            return target_value - reference_value
        return reference_value - target_value

    return score


@torch.no_grad()
def true_class_logit(model: nn.Module, split: Split, batch_size: int = 1024) -> torch.Tensor:
    """φ = log(p_y / (1 − p_y)) = z_y − logsumexp_{j≠y} z_j, computed stably."""
    was_training = model.training
    model.eval()
    parts = []
    for x, y in zip(split.x.split(batch_size), split.y.split(batch_size), strict=True):
        logits = model(x).double()
        true = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], -math.inf).logsumexp(1)
        parts.append(true - others)
    model.train(was_training)
    return torch.cat(parts).float() if parts else torch.zeros(0)


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
        "Watson et al., On the Importance of Difficulty Calibration in Membership Inference Attacks, ICLR 2022; Carlini et al., Membership Inference Attacks From First Principles, IEEE S&P 2022"
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
    )  # fmt: skip
    Config = MembershipConfig
    config: MembershipConfig

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        members, others = balanced(
            env.members, env.dataset.test, self.config.samples, derived_seed(env.seed, "risk:mia")
        )
        score = calibrated_score(model, env.independent_model(), "loss")
        inside, outside = score(members), score(others)
        threshold = float(np.quantile(score(env.calibration_data).numpy(), 1 - self.config.fpr))
        labels = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
        return {
            "mia_auc": float(roc_auc_score(labels, torch.cat([inside, outside]).numpy())),
            "mia_tpr_at_1_fpr": float((inside > threshold).float().mean()),
        }
