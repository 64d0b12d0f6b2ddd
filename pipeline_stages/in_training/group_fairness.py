"""Group fairness for equalized odds (mitigates discrimination), tabular data only.

Equalized odds (Hardt et al., "Equality of Opportunity in Supervised Learning", NeurIPS 2016)
asks for equal true- and false-positive rates across the two groups (s = 0, s = 1) of a
sensitive attribute. The defense fills the *loss_term* slot with one of two terms:

- ``reweighting`` (default): the Lagrangian / cost-sensitive reweighting at the heart of the
  reductions approach (Agarwal et al., "A Reductions Approach to Fair Classification", ICML
  2018), run inside the one training loop, in the spirit of FairBatch (Roh et al., ICLR 2021).
  Each step measures the TPR gap (label 1) and the FPR gap (label 0) of the current model's hard
  predictions on the validation split (held out, as Cotter et al., JMLR 2019, advise for
  constraints that must generalise), and moves two non-negative multipliers per label by
  ascent on the constraints ``gap_y ≤ slack`` and ``−gap_y ≤ slack``. The signed multiplier
  m_y is their difference; the samples of the cell that must move get an extra cross-entropy
  weight |m_y|: the positives of the group with the lower TPR, the negatives of the group with
  the higher FPR. The term is Σ_i w_i·CE_i / batch size, a sum of per-sample losses whose
  weights depend only on the sample's own (label, group) and on the multipliers (computed from
  the model and validation data, never from other training records), so DP-SGD's per-sample
  clipping and accounting stay valid in combination.
- ``penalty``: the plain batch relaxation λ·Σ_y |mean p(s=0, y) − mean p(s=1, y)| on the softmax
  probability p of the positive class (cells missing from the batch contribute nothing). Kept for
  comparison: on Adult it does not reduce the equalized-odds difference reliably (equal mean
  scores are not equal rates above the threshold; the noisy gaps of small batch cells reward
  squeezing a group's scores together; λ ≥ 1 collapses to a constant predictor). It couples the
  samples of a batch through the group means, so with DP-SGD the ε reported is the accountant's
  figure, not a proven guarantee.

fairlearn's own ExponentiatedGradient is not offered: it fits a randomised ensemble of
sklearn-style estimators, one per multiplier update, so it neither fills a slot of the shared
training loop nor yields the single nn.Module every other defense trains and measures.

Effectiveness: fairlearn's ``equalized_odds_difference`` (the larger of the TPR and FPR gaps
between groups) of the model's hard predictions on the test split, ``env.dataset.test.s`` being
the sensitive feature.

Known limit: where a (group, label) cell is small (Adult's women earning >50K), the last model's
rates for that cell swing from one step to the next, so the served model's gap depends on where
training stops, and the validation estimate that drives the multipliers is itself noisy. The
reductions approach answers this with an average of its iterates; this single-model term does
not, and post-processing (threshold_optimizer) is the steadier choice there
(docs/benchmarks.md, "group_fairness on Adult, diagnosed").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from fairlearn.metrics import equalized_odds_difference
from pydantic import Field
from torch import nn

from defcon.engine.defense import DefenseConfig, Environment, InTrainingDefense
from defcon.engine.models import predict
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError
from pipeline_stages.in_training.run_state import LossShare

if TYPE_CHECKING:
    from defcon.engine.training import TrainingRun


class GroupFairnessConfig(DefenseConfig):
    """Settings of the equalized-odds term (see the module docstring for the two methods)."""

    method: Literal["reweighting", "penalty"] = "reweighting"
    multiplier_lr: float = Field(
        default=2.0, ge=0, description="reweighting: multiplier change per epoch per unit of gap"
    )
    slack: float = Field(
        default=0.02, ge=0, description="reweighting: gaps within ±slack count as satisfied"
    )
    max_multiplier: float = Field(default=5.0, gt=0, description="reweighting: bound on |m_y|")
    rate_samples: int = Field(
        default=2000, ge=10, description="reweighting: validation rows used to estimate the rates"
    )
    weight: float = Field(default=0.3, ge=0, description="penalty: λ, weight of the penalty")
    positive_class: int = Field(default=1, ge=0, description="class whose rates are equalised")


def score_gaps(probs: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> dict[int, torch.Tensor]:
    """mean p(s=0, y) − mean p(s=1, y) for each label y present in both groups."""
    gaps = {}
    for label in torch.unique(y).tolist():
        in_0 = (y == label) & (s == 0)
        in_1 = (y == label) & (s == 1)
        if in_0.any() and in_1.any():
            gaps[int(label)] = probs[in_0].mean() - probs[in_1].mean()
    return gaps


def equalized_odds_penalty(probs: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Σ_y |mean p(s=0, y) − mean p(s=1, y)| over labels y present in both groups of the batch."""
    return sum((gap.abs() for gap in score_gaps(probs, y, s).values()), probs.new_zeros(()))


def rate_gaps(positive: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> dict[int, float]:
    """P(ŷ = pos | s=0, y) − P(ŷ = pos | s=1, y) per label y: the TPR gap (y = pos), FPR gap."""
    return {label: float(gap) for label, gap in score_gaps(positive.float(), y, s).items()}


@dataclass
class _Multipliers:
    """λ⁺_y, λ⁻_y ≥ 0 of one training run."""

    upper: dict[int, float] = field(default_factory=dict)  # for  gap_y ≤ slack
    lower: dict[int, float] = field(default_factory=dict)  # for −gap_y ≤ slack
    share: LossShare = field(default_factory=LossShare)


class GroupFairness(InTrainingDefense):
    """An equalized-odds term in the loss_term slot; measured by equalized-odds difference."""

    Config: ClassVar[type[DefenseConfig]] = GroupFairnessConfig
    config: GroupFairnessConfig

    # ------------------------------------------------------------------ training hook

    def loss_term(
        self,
        run: TrainingRun,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        """The equalized-odds term of this batch (reweighting or penalty, per the config)."""
        _check(run.env, self.config.positive_class)
        if self.config.method == "penalty":
            probs = logits.softmax(dim=1)[:, self.config.positive_class]
            term = self.config.weight * equalized_odds_penalty(probs, y, s)
        else:
            term = self._reweighting_term(run, logits, y, s)
        self._log_share(run, term, logits, y)
        return term

    def _log_share(
        self, run: TrainingRun, term: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> None:
        """The term's share of the loss so far, in the run's record (`defcon.planning.notices`): 0 says
        the defense never changed a gradient."""
        self._state(run).share.add(run, self.name, float(term.detach()), logits, y)

    def multipliers(self, run: TrainingRun) -> dict[int, float]:
        """The current signed multipliers m_y = λ⁺_y − λ⁻_y of `run` (for inspection)."""
        state = self._state(run)
        return {y: state.upper[y] - state.lower[y] for y in state.upper}

    def _state(self, run: TrainingRun) -> _Multipliers:
        return run.state(self.name, _Multipliers)

    def _validation_gaps(self, run: TrainingRun) -> dict[int, float]:
        """TPR/FPR gaps of the current model on (a seeded subset of) the validation split."""
        val = run.env.dataset.val.seeded_sample(
            self.config.rate_samples, derived_seed(run.env.seed, self.name)
        )
        model = run.plain_model
        was_training = model.training
        model.eval()
        with torch.no_grad():  # no graph: Opacus' hooks record nothing
            positive = model(val.x).argmax(1) == self.config.positive_class
        model.train(was_training)
        return rate_gaps(positive, val.y, val.s)

    def _reweighting_term(
        self, run: TrainingRun, logits: torch.Tensor, y: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """Σ_i w_i·CE_i / batch size, after one ascent step on the multipliers."""
        state = self._state(run)
        step = self.config.multiplier_lr / max(1, len(run.loader))
        slack, bound = self.config.slack, self.config.max_multiplier
        weights = logits.new_zeros(len(y))
        for label, gap in self._validation_gaps(run).items():
            upper = state.upper.get(label, 0.0) + step * (gap - slack)
            lower = state.lower.get(label, 0.0) + step * (-gap - slack)
            state.upper[label] = min(bound, max(0.0, upper))
            state.lower[label] = min(bound, max(0.0, lower))
            m = state.upper[label] - state.lower[label]
            if m == 0:
                continue
            if label == self.config.positive_class:  # raise the TPR of the lagging group
                group = 1 if m > 0 else 0
            else:  # lower the FPR of the group whose FPR is higher
                group = 0 if m > 0 else 1
            weights[(y == label) & (s == group)] = abs(m)
        ce = F.cross_entropy(logits, y, reduction="none")
        return (weights * ce).sum() / len(y)

    # ------------------------------------------------------------------ effectiveness

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """fairlearn's equalized-odds difference of `model` on the test split."""
        _check(env, self.config.positive_class)
        test = env.dataset.test
        was_training = model.training
        predicted = predict(model, test.x) == self.config.positive_class
        model.train(was_training)
        gap = equalized_odds_difference(
            (test.y == self.config.positive_class).numpy(),
            predicted.numpy(),
            sensitive_features=test.s.numpy(),
        )
        return {"equalized_odds_difference": float(gap)}


def _check(env: Environment, positive_class: int) -> None:
    dataset = env.dataset
    if dataset.sensitive_attribute is None or dataset.test.s is None or dataset.val.s is None:
        raise DefconError(
            f"group_fairness needs a sensitive attribute; dataset '{dataset.name}' has none "
            "(use adult or compas)"
        )
    if positive_class >= dataset.num_classes:
        raise DefconError(
            f"group_fairness: positive_class {positive_class} is not a class of "
            f"'{dataset.name}' ({dataset.num_classes} classes)"
        )
