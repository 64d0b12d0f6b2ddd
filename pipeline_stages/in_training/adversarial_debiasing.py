"""Adversarial debiasing (mitigates discrimination), tabular data with a binary task.

Zhang, Lemoine, Mitchell, "Mitigating Unwanted Biases with Adversarial Learning", AIES 2018 (the
method behind fairlearn's ``AdversarialFairnessClassifier``), on the shared training loop.

An adversary tries to predict the sensitive attribute s from the predictor's output. For
equalized odds it also sees the true label y, so what it can learn is the dependence of the
output on s *given* y (Zhang et al., Sec. 3). Its architecture is the paper's: with the
predictor's logit z (positive class minus the other), ŝ = σ(w·[σ((1+|c|)z), σ((1+|c|)z)·y,
σ((1+|c|)z)·(1−y)] + b), trained by its own optimizer on the batch with the predictor's output
detached. For demographic parity only the first input is kept.

The predictor is updated with ∇L_P − proj_{∇L_A} ∇L_P − α∇L_A (Zhang et al., Eq. 1): the
projection removes the part of the task gradient that would help the adversary, the last term
pushes against it. The slot takes a scalar, so the term is −(κ + α)·L_A with κ =
⟨∇L_P, ∇L_A⟩ / ‖∇L_A‖² computed over all predictor parameters and held constant: its gradient
is exactly −proj − α∇L_A, added to the loop's cross-entropy (L_P).

The projection is a setting, off by default. Zhang et al. analyse plain SGD with a decaying step;
the shared loop's optimizer is Adam, which rescales each coordinate of the combined gradient. In
trials on Adult subsamples, with the projection the game overshot: the predictor reversed the
group's advantage and the equalized-odds gap grew, for every α and adversary speed tried. Without
it (the predictor's loss L_P − α·L_A, as in adversarial training of representations, Edwards &
Storkey, ICLR 2016) and a small α the gap shrank with accuracy nearly unchanged.

`stop_at_chance` (off by default) caps the adversary's loss the predictor pushes against at
chance, the loss of an adversary that ignores the output (H(s | y) on the batch): Zhang et al.'s
equilibrium is an adversary no better than guessing, and pushing past it rewards fooling a
lagging adversary, i.e. reversing the groups' advantage. On Adult it made the gap steadier across
seeds but did not make the defense effective alone on the second seed set, so it is not the
default (docs/measurement.md).

The term cannot share the loop with a DP optimizer (the spec's `excludes`): the adversary learns
from the training records without clipping or noise and shapes every later gradient, so the
accountant's ε would bound nothing; and κ needs two extra backward passes per batch, which
Opacus' hooks would record as per-sample gradients.

Effectiveness: fairlearn's ``equalized_odds_difference`` on the test split, computed exactly as
``group_fairness`` computes it (`pipeline_stages.fairness.equalized_odds_gap`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from defcon.engine.defense import DefenseConfig, Environment, InTrainingDefense
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError
from pipeline_stages.fairness import POSITIVE_CLASS, equalized_odds_gap, fairness_problem
from pipeline_stages.in_training.run_state import LossShare

if TYPE_CHECKING:
    from defcon.engine.training import TrainingRun


class AdversarialDebiasingConfig(DefenseConfig):
    """Settings of the adversary and of the predictor's update (Zhang et al., AIES 2018)."""

    criterion: Literal["equalized_odds", "demographic_parity"] = Field(
        default="equalized_odds",
        description="equalized_odds: the adversary also sees the label; demographic_parity: "
        "only the output",
    )
    alpha: float = Field(
        default=0.3, ge=0, description="α, weight of the adversary's loss in the predictor's update"
    )
    projection: bool = Field(
        default=False,
        description="remove the projection of the task gradient on the adversary's gradient "
        "(Zhang et al.'s Eq. 1; off by default: unstable with the loop's Adam, see the module)",
    )
    adversary_lr: float = Field(
        default=0.01, gt=0, description="Adam learning rate of the adversary"
    )
    adversary_steps: int = Field(
        default=1, ge=1, description="adversary updates per batch, before the predictor's update"
    )
    stop_at_chance: bool = Field(
        default=False,
        description="push against the adversary only while its loss is below what guessing s "
        "from the batch's base rates (per label under equalized_odds) would score",
    )


class Adversary(nn.Module):
    """Zhang et al.'s adversary: a logistic model of s on the sharpened output (and the label)."""

    def __init__(self, with_label: bool) -> None:
        super().__init__()
        self.with_label = with_label
        self.c = nn.Parameter(torch.ones(()))
        self.linear = nn.Linear(3 if with_label else 1, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The logit of ŝ = 1 for predictor logits `z` and labels `y` (0/1 floats)."""
        sharp = torch.sigmoid((1 + self.c.abs()) * z)
        inputs = [sharp, sharp * y, sharp * (1 - y)] if self.with_label else [sharp]
        return self.linear(torch.stack(inputs, dim=1)).squeeze(1)


@dataclass
class _AdversaryState:
    """The adversary of one training run."""

    adversary: Adversary
    optimizer: torch.optim.Optimizer
    share: LossShare = field(default_factory=LossShare)  # |term| beside the cross-entropy


class AdversarialDebiasing(InTrainingDefense):
    """An adversary on the output in the loss_term slot; measured by equalized-odds difference."""

    Config: ClassVar[type[DefenseConfig]] = AdversarialDebiasingConfig
    config: AdversarialDebiasingConfig

    def _fresh(self, run: TrainingRun) -> _AdversaryState:
        """A seeded adversary for a new run, on the CPU with the outputs it reads
        (`defcon.engine.devices`: a placed model answers there)."""
        torch.manual_seed(derived_seed(run.env.seed, f"{self.name}:adversary"))
        adversary = Adversary(self.config.criterion == "equalized_odds")
        optimizer = torch.optim.Adam(adversary.parameters(), lr=self.config.adversary_lr)
        return _AdversaryState(adversary, optimizer)

    def loss_term(
        self,
        run: TrainingRun,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        """−(κ + α)·L_A: after one adversary step, push the predictor against the adversary."""
        _check(run.env, logits.shape[1])
        state = run.state(self.name, lambda: self._fresh(run))
        z = logits[:, POSITIVE_CLASS] - logits[:, 1 - POSITIVE_CLASS]
        label = (y == POSITIVE_CLASS).float()
        target = s.float()
        for _ in range(self.config.adversary_steps):
            state.optimizer.zero_grad(set_to_none=True)  # also drops what the last batch left
            guess = state.adversary(z.detach(), label)
            F.binary_cross_entropy_with_logits(guess, target).backward()
            state.optimizer.step()
        adversary_loss = F.binary_cross_entropy_with_logits(state.adversary(z, label), target)
        kappa = self._projection(run, logits, y, adversary_loss) if self.config.projection else 0.0
        pushed = adversary_loss
        if self.config.stop_at_chance:
            given = label if self.config.criterion == "equalized_odds" else torch.zeros_like(label)
            pushed = up_to_chance(adversary_loss, target, given)
        term = -(kappa + self.config.alpha) * pushed
        state.share.add(run, self.name, abs(float(term.detach())), logits, y)
        return term

    def _projection(
        self, run: TrainingRun, logits: torch.Tensor, y: torch.Tensor, adversary_loss: torch.Tensor
    ) -> float:
        """κ = ⟨∇L_P, ∇L_A⟩ / ‖∇L_A‖² over the predictor's parameters (0 when ∇L_A vanishes)."""
        params = [p for p in run.plain_model.parameters() if p.requires_grad]
        task = torch.autograd.grad(
            F.cross_entropy(logits, y), params, retain_graph=True, allow_unused=True
        )
        adv = torch.autograd.grad(adversary_loss, params, retain_graph=True, allow_unused=True)
        dot, norm = 0.0, 0.0
        for g, h in zip(task, adv, strict=True):
            if g is not None and h is not None:
                dot += float((g * h).sum())
            if h is not None:
                norm += float((h * h).sum())
        return dot / norm if norm > 1e-12 else 0.0

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """fairlearn's equalized-odds difference of `model` on the test split."""
        _check(env, env.dataset.num_classes)
        return {"equalized_odds_difference": equalized_odds_gap(model, env.dataset.test)}


def chance_loss(target: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of the best adversary that ignores the output: it predicts each
    group's base rate of s within each value of `given` (the label, or one group), i.e. the
    conditional entropy H(s | given) on the batch, in nats."""
    total = torch.zeros(())
    for value in torch.unique(given):
        members = target[given == value]
        rate = members.mean().clamp(1e-6, 1 - 1e-6)
        entropy = -(rate * rate.log() + (1 - rate) * (1 - rate).log())
        total = total + entropy * len(members) / len(target)
    return total


def up_to_chance(
    adversary_loss: torch.Tensor, target: torch.Tensor, given: torch.Tensor
) -> torch.Tensor:
    """The adversary's loss, capped at chance (`chance_loss`): pushing the predictor past it
    only makes a lagging adversary confidently wrong (the groups' advantage reversed), so the
    cap's gradient vanishes there."""
    return torch.minimum(adversary_loss, chance_loss(target, given))


def _check(env: Environment, num_classes: int) -> None:
    problem = fairness_problem("adversarial_debiasing", env.dataset)
    if problem:
        raise DefconError(f"{problem} (use adult or compas)")
    if num_classes != 2:
        raise DefconError(
            f"adversarial_debiasing needs a binary task; '{env.dataset.name}' has "
            f"{num_classes} classes"
        )
    groups = env.dataset.train.s
    if groups is not None and int(groups.max()) > 1:
        raise DefconError(
            "adversarial_debiasing needs a binary sensitive attribute (groups 0 and 1); "
            f"'{env.dataset.name}' has {int(groups.max()) + 1} groups"
        )
