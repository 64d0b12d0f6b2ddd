"""Model theft (SoK R3): a surrogate trained on the answers of the served API.

Tramèr et al., "Stealing Machine Learning Models via Prediction APIs", USENIX Security 2016;
Orekondy, Schiele, Fritz, "Knockoff Nets", CVPR 2019. The thief holds population data
(`env.attacker_data`, never the owner's training records), queries the served model for top-1
labels, and trains the dataset's default architecture on them (the threat model's, whatever the
victim uses), early-stopping on agreement with the API on a held-out share of its queries and
keeping the best epoch. Fidelity (agreement with the API on the test split) says how good a copy
it is; accuracy (on the true test labels) what the copy is worth.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field
from torch import nn

from defcon.engine.defense import Environment
from defcon.engine.extraction import extract
from defcon.engine.models import arch_for, predict
from defcon.engine.seeds import derived_seed
from defcon.risks.base import AttackConfig, Lab, RiskAttack, RiskMetric
from defcon.vocabulary import Direction, Risk


class ModelTheftConfig(AttackConfig):
    max_epochs: int = Field(default=40, ge=1)
    patience: int = Field(default=3, ge=1)
    holdout: float = Field(default=0.2, gt=0, lt=1)


class ModelTheft(RiskAttack):
    risk: ClassVar[Risk] = Risk.MODEL_THEFT
    reference: ClassVar[str] = (
        "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016; Orekondy et al., Knockoff Nets, CVPR 2019"
    )
    metrics: ClassVar[tuple[RiskMetric, ...]] = (
        RiskMetric(
            name="surrogate_fidelity", riskier=Direction.HIGHER, min_effect=0.05,
            description="share of test inputs on which the stolen copy agrees with the API",
        ),
        RiskMetric(
            name="surrogate_accuracy", riskier=Direction.HIGHER, primary=False, min_effect=0.05,
            description="test accuracy of the stolen copy",
        ),
    )  # fmt: skip
    Config = ModelTheftConfig
    config: ModelTheftConfig

    def steal(self, model: nn.Module, env: Environment) -> nn.Module:
        """The thief's surrogate of the served `model` (see the module docstring); also what
        verification defenses (a fingerprint) are measured on: the copy a thief holds."""
        cfg, profile = self.config, env.profile
        queries = env.attacker_data
        answered = queries.with_(y=predict(model, queries.x))
        order = np.random.default_rng(derived_seed(env.seed, "risk:theft:holdout")).permutation(
            len(answered)
        )
        held = max(1, round(cfg.holdout * len(answered)))
        fit, check = answered.subset(np.sort(order[held:])), answered.subset(np.sort(order[:held]))
        return extract(
            fit, check, arch_for(env.dataset, width=profile.width), profile,
            derived_seed(env.seed, "risk:theft:surrogate"),
            max_epochs=cfg.max_epochs, patience=cfg.patience, device=env.device,
        ).model  # fmt: skip

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        surrogate = self.steal(model, env)
        test = env.dataset.test
        copied = predict(surrogate, test.x)
        return {
            "surrogate_fidelity": float((copied == predict(model, test.x)).float().mean()),
            "surrogate_accuracy": float((copied == test.y).float().mean()),
        }
