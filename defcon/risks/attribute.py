"""Attribute inference (SoK P3): infer a record's sensitive attribute from the model, AUC.

Fredrikson et al., "Privacy in Pharmacogenetics", USENIX Security 2014; Yeom et al., "Privacy
Risk in Machine Learning: Analyzing the Connection to Overfitting", CSF 2018, §5. The attacker
knows a training record's other attributes and its label, not its sensitive attribute; it asks
the model about the record with each group's value filled in and guesses the group whose version
the model fits better: score = log p(y | x, s=1) − log p(y | x, s=0). A model that ignores the
attribute gives AUC 0.5. The AUC on training records is the risk; the AUC on test records
(secondary) shows how much of it is what the population reveals rather than memorisation.
Each group's filled-in value is its most common encoding of the attribute in the attacker's data,
so the query stays a valid record. Refused where the sensitive attribute is not a model input.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.metrics import roc_auc_score
from torch import nn

from defcon.engine.data import Dataset, Split
from defcon.engine.defense import Environment
from defcon.engine.seeds import derived_seed
from defcon.risks.base import AttackConfig, Lab, RiskAttack, RiskMetric, needs_sensitive_attribute
from defcon.risks.membership import balanced
from defcon.vocabulary import Direction, Risk


class AttributeConfig(AttackConfig):
    samples: int = Field(default=2000, ge=10, description="records attacked per side")


def _columns(dataset: Dataset) -> tuple[int, ...] | None:
    return next(
        (g.columns for g in dataset.feature_groups if g.name == dataset.sensitive_attribute), None
    )


class AttributeInference(RiskAttack):
    risk: ClassVar[Risk] = Risk.ATTRIBUTE_INFERENCE
    reference: ClassVar[str] = (
        "Fredrikson et al., Privacy in Pharmacogenetics, USENIX Security 2014; Yeom et al., Privacy Risk in Machine Learning, CSF 2018"
    )
    metrics: ClassVar[tuple[RiskMetric, ...]] = (
        RiskMetric(
            name="attribute_auc", riskier=Direction.HIGHER, min_effect=0.02,
            description="ROC AUC of inferring the sensitive group of training records",
        ),
        RiskMetric(
            name="attribute_auc_test", riskier=Direction.HIGHER, primary=False, min_effect=0.02,
            description="the same attack on test records (what the population alone reveals)",
        ),
    )  # fmt: skip
    Config = AttributeConfig
    config: AttributeConfig

    def refusal(self, dataset: Dataset) -> str | None:
        problem = needs_sensitive_attribute(dataset)
        if problem is None and _columns(dataset) is None:
            problem = (
                f"the sensitive attribute '{dataset.sensitive_attribute}' is not a model input"
            )
        return problem

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        columns = list(_columns(env.dataset) or ())
        known = env.attacker_data
        fills = {}
        for group in (0, 1):
            rows = known.x[known.s == group][:, columns]
            values, counts = torch.unique(rows, dim=0, return_counts=True)
            fills[group] = values[counts.argmax()]

        @torch.no_grad()
        def score(split: Split) -> torch.Tensor:
            fitted = []
            for group in (0, 1):
                x = split.x.clone()
                x[:, columns] = fills[group]
                fitted.append(-F.cross_entropy(model(x), split.y, reduction="none"))
            return fitted[1] - fitted[0]

        members, others = balanced(
            env.members, env.dataset.test, self.config.samples, derived_seed(env.seed, "risk:attr")
        )
        return {
            "attribute_auc": float(roc_auc_score(members.s.numpy(), score(members).numpy())),
            "attribute_auc_test": float(roc_auc_score(others.s.numpy(), score(others).numpy())),
        }
