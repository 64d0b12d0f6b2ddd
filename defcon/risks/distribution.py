"""Distribution inference (SoK P4): tell training sets with different sensitive-group ratios apart.

Suri & Evans, "Formalizing and Estimating Distribution Inference Risks", PETS 2022; Ganju et al.,
"Property Inference Attacks on Fully Connected Neural Networks using Permutation Invariant
Representations", CCS 2018. The game: the audited recipe (same defenses) is trained on training
sets whose share of group s = 1 is either `ratios[0]` or `ratios[1]` (`victims` per ratio, rows
drawn from the clean training split); the attacker trains `shadows` plain models per ratio on its
own population data, describes each model by its mean positive-class probability on queries of
either group (and overall), fits a logistic regression on the shadows and guesses each victim's
ratio. The metric is the share of victims guessed right (0.5 is chance). Victims and shadows see
`size` rows (the most the attacker's data allows at both ratios) for about `steps` optimizer steps.

Suri & Evans's reading is stable only with many victims per ratio (on the order of 100); with a
handful each seed's accuracy takes one of a few values and the mean is noise. So the game plays
100 victims and 100 shadows per ratio, which makes it the costliest attack of an audit (200
trainings of the audited recipe per arm and seed): it runs only when named.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from defcon.engine.data import Dataset
from defcon.engine.defense import Environment
from defcon.engine.seeds import derived_seed
from defcon.risks.base import AttackConfig, Lab, RiskAttack, RiskMetric, needs_sensitive_attribute
from defcon.vocabulary import Direction, Risk


class DistributionConfig(AttackConfig):
    ratios: tuple[float, float] = (0.2, 0.8)
    size: int = Field(default=600, ge=20, description="most rows per victim / shadow training set")
    victims: int = Field(default=100, ge=1, description="victims per ratio")
    shadows: int = Field(default=100, ge=2, description="shadow models per ratio")
    steps: int = Field(default=40, ge=1, description="optimizer steps per model (about)")


def ratio_rows(s: np.ndarray, ratio: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` row indices of which a share `ratio` has s = 1 (sorted)."""
    ones = round(ratio * size)
    pick = [
        rng.choice(np.flatnonzero(s == 1), ones, replace=False),
        rng.choice(np.flatnonzero(s == 0), size - ones, replace=False),
    ]
    return np.sort(np.concatenate(pick))


def feasible_size(s: np.ndarray, ratios: tuple[float, float], cap: int) -> int:
    """The largest size (≤ cap, 80 % of the limit so draws differ) both ratios can be drawn at."""
    ones, zeros = int((s == 1).sum()), int((s == 0).sum())
    limit = min(
        min(ones / r if r > 0 else math.inf, zeros / (1 - r) if r < 1 else math.inf) for r in ratios
    )
    return int(min(cap, 0.8 * limit))


class DistributionInference(RiskAttack):
    risk: ClassVar[Risk] = Risk.DISTRIBUTION_INFERENCE
    reference: ClassVar[str] = (
        "Suri and Evans, Formalizing and Estimating Distribution Inference Risks, PETS 2022; Ganju et al., Property Inference Attacks on Fully Connected Neural Networks, CCS 2018"
    )
    metrics: ClassVar[tuple[RiskMetric, ...]] = (
        RiskMetric(
            name="distribution_inference_accuracy", riskier=Direction.HIGHER, min_effect=0.05,
            description="share of victims whose training-set group ratio the attacker guesses",
        ),
    )  # fmt: skip
    Config = DistributionConfig
    config: DistributionConfig
    named_only: ClassVar[str | None] = (
        "it trains 100 victims of the audited recipe per ratio, for every arm and seed (fewer "
        "give a reading that is noise)"
    )

    def refusal(self, dataset: Dataset) -> str | None:
        problem = needs_sensitive_attribute(dataset)
        if problem is None and dataset.num_classes != 2:
            problem = f"the attacker's features need a binary task, and {dataset.name} has {dataset.num_classes} classes"
        return problem

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        cfg = self.config
        own, pool = env.attacker_data, env.dataset.train
        size = min(feasible_size(own.s.numpy(), cfg.ratios, cfg.size),
                   feasible_size(pool.s.numpy(), cfg.ratios, cfg.size))  # fmt: skip
        epochs = max(1, math.ceil(cfg.steps / math.ceil(size / env.profile.batch_size)))
        queries = env.calibration_data
        rng = np.random.default_rng(derived_seed(env.seed, "risk:distribution"))

        @torch.no_grad()
        def describe(trained: nn.Module) -> list[float]:
            trained.eval()
            loss = F.cross_entropy(trained(queries.x), queries.y, reduction="none")
            by_group = [float(loss[queries.s == group].mean()) for group in (0, 1)]
            return [*by_group, by_group[0] - by_group[1]]

        features, labels = [], []
        for side, ratio in enumerate(cfg.ratios):
            for i in range(cfg.shadows):
                rows = ratio_rows(own.s.numpy(), ratio, size, rng)
                shadow = lab.shadow(
                    own.subset(rows).with_(origin=None), f"shadow-{ratio}-{i}", epochs
                )
                features.append(describe(shadow))
                labels.append(side)
        meta = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, labels)
        right = []
        for side, ratio in enumerate(cfg.ratios):
            for i in range(cfg.victims):
                rows = ratio_rows(pool.s.numpy(), ratio, size, rng)
                victim = lab.victim(rows, f"victim-{ratio}-{i}", epochs)
                right.append(int(meta.predict([describe(victim)])[0]) == side)
        return {"distribution_inference_accuracy": float(np.mean(right))}
