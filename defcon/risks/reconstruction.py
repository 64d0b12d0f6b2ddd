"""Data reconstruction (SoK P2): model inversion of each class's representative.

Fredrikson, Jha, Ristenpart, "Model Inversion Attacks that Exploit Confidence Information and
Basic Countermeasures", CCS 2015. Per class c, gradient descent on an input x in [0, 1]
(a sigmoid of free parameters) minimises CE(f(x), c) + λ‖x − x₀‖², starting from the mean x₀ of
the attacker's population data. Similarity to that class's training data is read centred on the
training mean μ: cos(x̂_c − μ, μ_c − μ), μ_c the mean of class c's training records, so an
unchanged start scores about 0 and a reconstruction that drifts towards c's records scores up to 1;
`reconstruction_class_match` is the share of classes whose reconstruction is most similar to its
own class's mean (chance: 1/classes).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from defcon.engine.defense import Environment
from defcon.risks.base import AttackConfig, Lab, RiskAttack, RiskMetric
from defcon.vocabulary import Direction, Risk


class ReconstructionConfig(AttackConfig):
    steps: int = Field(default=200, ge=1)
    lr: float = Field(default=0.05, gt=0)
    l2: float = Field(default=0.01, ge=0, description="weight of ‖x − x₀‖² per input value")


class DataReconstruction(RiskAttack):
    risk: ClassVar[Risk] = Risk.DATA_RECONSTRUCTION
    reference: ClassVar[str] = (
        "Fredrikson, Jha, Ristenpart, Model Inversion Attacks that Exploit Confidence Information and Basic Countermeasures, CCS 2015"
    )
    metrics: ClassVar[tuple[RiskMetric, ...]] = (
        RiskMetric(
            name="reconstruction_similarity", riskier=Direction.HIGHER, min_effect=0.05,
            description="mean over classes of cos(inversion − μ, class training mean − μ)",
        ),
        RiskMetric(
            name="reconstruction_class_match", riskier=Direction.HIGHER, primary=False, min_effect=0.1,
            description="share of classes whose inversion is closest to its own class's mean",
        ),
    )  # fmt: skip
    Config = ReconstructionConfig
    config: ReconstructionConfig

    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        classes = env.dataset.num_classes
        start = env.attacker_data.x.mean(0, keepdim=True).clamp(1e-3, 1 - 1e-3)
        free = torch.logit(start).repeat(classes, *[1] * (start.dim() - 1)).requires_grad_(True)
        target = torch.arange(classes)
        optimizer = torch.optim.Adam([free], lr=self.config.lr)
        for _ in range(self.config.steps):
            optimizer.zero_grad(set_to_none=True)
            x = torch.sigmoid(free)
            penalty = ((x - start) ** 2).flatten(1).mean(1).sum()
            loss = F.cross_entropy(model(x), target, reduction="sum") + self.config.l2 * penalty
            loss.backward()
            optimizer.step()
        inverted = torch.sigmoid(free.detach()).flatten(1)
        members = env.members
        flat = members.x.flatten(1)
        centre = flat.mean(0)
        means = torch.stack([flat[members.y == c].mean(0) for c in range(classes)]) - centre
        similarity = F.cosine_similarity((inverted - centre)[:, None], means[None], dim=2)
        own = similarity.diagonal()
        return {
            "reconstruction_similarity": float(own.mean()),
            "reconstruction_class_match": float((similarity.argmax(1) == target).float().mean()),
        }
