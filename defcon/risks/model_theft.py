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

import copy
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from defcon.attacks import derived_seed
from defcon.defense import Environment
from defcon.models import arch_for, build_model, predict
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
        seed = derived_seed(env.seed, "risk:theft:surrogate")
        surrogate = build_model(arch_for(env.dataset, width=profile.width), seed)
        optimizer = torch.optim.Adam(surrogate.parameters(), lr=profile.lr)
        best, best_state, since = -1.0, None, 0
        for _ in range(cfg.max_epochs):
            surrogate.train()
            for x, y, _s in fit.loader(profile.batch_size, shuffle=True, seed=seed):
                if len(y) < 2:  # BatchNorm needs two rows
                    continue
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(surrogate(x), y).backward()
                optimizer.step()
            agreement = float((predict(surrogate, check.x) == check.y).float().mean())
            if agreement > best:
                best, best_state, since = agreement, copy.deepcopy(surrogate.state_dict()), 0
            else:
                since += 1
                if since >= cfg.patience:
                    break
        surrogate.load_state_dict(best_state)
        surrogate.eval()
        return surrogate

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        surrogate = self.steal(model, env)
        test = env.dataset.test
        copied = predict(surrogate, test.x)
        return {
            "surrogate_fidelity": float((copied == predict(model, test.x)).float().mean()),
            "surrogate_accuracy": float((copied == test.y).float().mean()),
        }
