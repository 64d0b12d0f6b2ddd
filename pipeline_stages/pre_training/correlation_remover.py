"""Correlation remover (mitigates discrimination): fairlearn's own `CorrelationRemover`.

Mechanism (fairlearn.preprocessing.CorrelationRemover). With S the sensitive columns and Z the
others, fairlearn regresses every non-sensitive column on the centred sensitive ones over the
training data, β = argmin ‖Z − (S − 1·μᵀ)β‖² (μ: the columns' training means), and replaces Z by
its residual, blended by `alpha`: Z* = Z − α·(S − 1·μᵀ)β. The sensitive columns are dropped. The
inputs then carry no linear trace of the attribute, so a model trained on them cannot lean on the
attribute or its linear proxies (Feldman et al., "Certifying and Removing Disparate Impact",
KDD 2015, repair the features for the same purpose). Only linear correlation goes: fairlearn
notes that this suits (generalised) linear models; a non-linear model may still recover it.

The transform must reach every input the model sees, the served queries too: a model trained on
transformed rows but queried with raw ones answers out of distribution. So the defense is an
*input layer* (`PreTrainingDefense.input_layer`): fairlearn's object is fitted on the training
split (as the pipeline has it at this point, poisoned rows and earlier defenses' rows included)
and its fitted coefficients become one fixed affine map of the F input columns,

    out[Z] = Z − α·(S − μ)·β        out[S] = 0,

which the model trains behind and is served with (the core folds it into the model's first
Linear: a plain model of the same architecture, the same function). The sensitive columns become
zeros instead of being removed, which keeps the data's shape (every defense, trigger and attack
works on the F columns of the dataset) and is the same as dropping them for the model: a zero
input contributes nothing and its weights receive no gradient. `apply` leaves the training split
as it is: it stays in the data's own space (provenance, members, triggers and the validation rows
in-training defenses read all keep their meaning), and the layer transforms it inside the model.

The sensitive columns are the feature group named like the dataset's sensitive attribute (Adult:
`sex`, COMPAS: `race`), or the `sensitive_columns` setting. Effectiveness: fairlearn's
equalized-odds difference of the served model on the test split, computed as `group_fairness`
computes it.

Measured alone on Adult (quick profile, seeds 0–2; benchmarks/results/new_defenses/fairness.md):
0.089 ± 0.026 without the defense, 0.112 ± 0.018 with it, clean accuracy unchanged — not
effective on equalized odds with defcon's MLP. fairlearn's caveat is the likely reason: on one-hot
features the residual Z − (S − μ)β takes different values in the two groups, so a non-linear
model still reads the attribute; and equal error rates are not what decorrelation aims at.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from fairlearn.preprocessing import CorrelationRemover as FairlearnCorrelationRemover
from pydantic import Field
from torch import nn

from defcon.engine.data import Dataset, Split
from defcon.engine.defense import DefenseConfig, Environment, PreTrainingDefense
from defcon.engine.models import InputLayer, input_layer_problem
from defcon.errors import DefconError
from pipeline_stages.fairness import equalized_odds_gap, fairness_problem, sensitive_columns


class CorrelationRemoverConfig(DefenseConfig):
    """fairlearn's setting and where the sensitive attribute is among the inputs."""

    alpha: float = Field(
        default=1.0, ge=0, le=1, description="fairlearn's alpha: 1 removes all linear correlation"
    )
    sensitive_columns: tuple[int, ...] | None = Field(
        default=None,
        description="input columns of the sensitive attribute (default: the feature group named "
        "like the dataset's sensitive attribute)",
    )


class CorrelationRemover(PreTrainingDefense):
    """fairlearn's CorrelationRemover, fitted on the training split, as the model's input layer."""

    Config: ClassVar[type[DefenseConfig]] = CorrelationRemoverConfig
    config: CorrelationRemoverConfig

    def columns(self, dataset: Dataset) -> tuple[int, ...]:
        return sensitive_columns(self.name, dataset, self.config.sensitive_columns)

    def model_problem(self, model: nn.Module, dataset: Dataset) -> str | None:
        """The attribute must be among the inputs, and the layer foldable into the model."""
        problem = fairness_problem(self.name, dataset)
        if problem:
            return problem
        try:
            self.columns(dataset)
        except DefconError as error:
            return str(error)
        return input_layer_problem(model, dataset.train.x.shape[1])

    def apply(self, train: Split, env: Environment) -> Split:
        """The training split unchanged: the transform is the model's input layer."""
        self.columns(env.dataset)  # refuse data without the attribute among its inputs now
        return train

    def fit(self, train: Split, env: Environment) -> FairlearnCorrelationRemover:
        """fairlearn's CorrelationRemover fitted on `train` (in float64)."""
        remover = FairlearnCorrelationRemover(
            sensitive_feature_ids=list(self.columns(env.dataset)), alpha=self.config.alpha
        )
        return remover.fit(train.x.double().numpy())

    def input_layer(self, train: Split, env: Environment) -> InputLayer:
        """fairlearn's fitted transform of `train` as one fixed affine map of the inputs."""
        return layer_of(self.fit(train, env), train.x.shape[1])

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """fairlearn's equalized-odds difference of `model` on the test split."""
        problem = fairness_problem(self.name, env.dataset)
        if problem:
            raise DefconError(problem)
        return {"equalized_odds_difference": equalized_odds_gap(model, env.dataset.test)}


def layer_of(remover: FairlearnCorrelationRemover, width: int) -> InputLayer:
    """x ↦ Wx + b with out[Z] = fairlearn's transform of x and out[S] = 0 (see the docstring).

    Read from the fitted object: `beta_` (|S| × |Z|), `sensitive_mean_` and `alpha`; the
    non-sensitive columns in fairlearn's order (ascending).
    """
    sensitive = [int(i) for i in remover.sensitive_feature_ids]
    others = [i for i in range(width) if i not in sensitive]
    beta = torch.as_tensor(np.asarray(remover.beta_), dtype=torch.float64)
    mean = torch.as_tensor(np.asarray(remover.sensitive_mean_), dtype=torch.float64)
    alpha = float(remover.alpha)
    weight = torch.zeros(width, width, dtype=torch.float64)
    bias = torch.zeros(width, dtype=torch.float64)
    rows = torch.tensor(others)
    weight[rows, rows] = 1.0
    weight[rows[:, None], torch.tensor(sensitive)[None, :]] = -alpha * beta.T
    bias[rows] = alpha * (mean @ beta)
    return InputLayer(weight, bias)
