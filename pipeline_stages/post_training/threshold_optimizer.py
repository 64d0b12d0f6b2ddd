"""Threshold optimizer (mitigates discrimination): fairlearn's own `ThresholdOptimizer`.

Mechanism (Hardt, Price, Srebro, "Equality of Opportunity in Supervised Learning", NeurIPS 2016;
fairlearn.postprocessing.ThresholdOptimizer). The trained model's score is kept; only the
decision derived from it changes: per group of the sensitive attribute, a threshold (or a random
mix of two thresholds, and for the group with the better ROC curve a share of coin-flip answers)
chosen so that both groups get the same true- and false-positive rates (equalized odds) at the
most accurate such point of the intersection of their ROC hulls. fairlearn fits it here with
`constraints="equalized_odds"`, `prefit=True` around the model (an sklearn-style estimator over
the torch model), never on test data. By default (`fit_on="training_and_validation"`) on the
owner's clean training records and the validation split together, as fairlearn's user guide fits
it on the training data: the smallest (group, label) cell — Adult's women earning >50K, ~1 % of
the rows — sets how well the rates are estimated, and the validation split alone holds about a
hundred such rows, so the fitted point's rates miss the test rates by several hundredths (the
defense's own equalized-odds gap varied across seeds as much as the undefended one). Scores on
training records are optimistic when the model overfits them, so when the model's accuracy on
its training records exceeds its validation accuracy by more than `overfit_gap`, it is fitted on
the validation split alone (the run's facts, `env.record`, say which); `fit_on="validation"`
always fits there. `predict_method="decision_function"` scores a row by the model's margin
ℓ₁ − ℓ₀ rather than by its probability: thresholding works on ranks, so the optimum is the same,
and margins do not saturate (confident rows' float32 probabilities round to exactly 1 and tie).

Serving (`apply` returns `FairThresholds`, a serving wrapper around a copy of the model). A
derived predictor answers with a random draw: fairlearn's `predict` answers 1 when a uniform u
falls at or below the row's probability of a positive answer (`_pmf_predict`). Here u is a keyed
hash of the query (HMAC-SHA256 of the input rounded to `decimals`, key from the seed, as DAWN
keys its answers), so the same query always gets the same answer whatever batch it comes in, and
the run is reproducible. Since that probability is a step function of the margin, u picks one
threshold τ per query (the margin threshold of fairlearn's mix at which the probability first
reaches u; −∞ or +∞ when the answer does not depend on the margin), and the answer is m > τ —
what fairlearn's rule gives with the same u (tested).

What it returns as logits. Every other defense and attack reads the served model through its
logits: argmax (labels), softmax (confidences), gradients (attacks, attributions). The wrapper
serves the binary logits [−m′/2, m′/2] with m′ = m − τ: argmax is the post-processed answer; the
margin is the model's own, shifted by the query's threshold (so softmax is the model's confidence
relative to the group's threshold, and input gradients are the model's — an attacker attacks the
real decision, no gradient masking); answers that ignore the input (τ = ±∞: the coin-flip share)
get the constant margin ±`constant_margin` and zero input gradient, as the answer has. The group
of a query is read from its sensitive columns (`pipeline_stages.fairness.GroupReader`): the
decision needs the attribute, and Adult and COMPAS keep it among their inputs.

Effectiveness: fairlearn's equalized-odds difference of the served predictions on the test split,
computed as `group_fairness` computes it. Binary tasks only (as fairlearn's optimizer).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from fairlearn.postprocessing import ThresholdOptimizer as FairlearnThresholdOptimizer
from pydantic import Field
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from defcon.engine.data import Dataset, Split
from defcon.engine.defense import DefenseConfig, Environment, PostTrainingDefense, ServingWrapper
from defcon.engine.models import accuracy
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError
from pipeline_stages.fairness import (
    POSITIVE_CLASS,
    GroupReader,
    equalized_odds_gap,
    fairness_problem,
    sensitive_columns,
)


class ThresholdOptimizerConfig(DefenseConfig):
    """fairlearn's settings, how answers are drawn, and where the attribute is among the inputs."""

    objective: Literal["accuracy_score", "balanced_accuracy_score"] = Field(
        default="accuracy_score", description="what fairlearn maximises under equalized odds"
    )
    grid_size: int = Field(default=1000, ge=10, description="fairlearn's grid over the FPR axis")
    fit_on: Literal["training_and_validation", "validation"] = Field(
        default="training_and_validation",
        description="the records fairlearn fits on: the clean training records with the "
        "validation split (validation alone when the model overfits them), or validation only",
    )
    overfit_gap: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="training minus validation accuracy above which the training records are "
        "left out of the fit",
    )
    decimals: int = Field(
        default=4, ge=0, le=8, description="inputs are rounded to this many decimals before hashing"
    )
    constant_margin: float = Field(
        default=1.0, gt=0, description="margin served with answers that ignore the input"
    )
    sensitive_columns: tuple[int, ...] | None = Field(
        default=None,
        description="input columns of the sensitive attribute (default: the feature group named "
        "like the dataset's sensitive attribute)",
    )


def margin(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ℓ₁ − ℓ₀: the model's score of the positive class 1 (float32, as served)."""
    logits = model(x)
    return logits[:, 1] - logits[:, 0]


class TorchScorer(ClassifierMixin, BaseEstimator):
    """The trained torch model as the prefit sklearn estimator fairlearn post-processes."""

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> TorchScorer:  # noqa: N803
        """prefit: nothing to learn."""
        return self

    @torch.no_grad()
    def decision_function(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        assert self.model is not None
        was_training = self.model.training
        self.model.eval()
        x = torch.as_tensor(np.asarray(X), dtype=torch.float32)
        scores = torch.cat([margin(self.model, chunk) for chunk in x.split(1024)])
        self.model.train(was_training)
        return scores.double().numpy()


def keyed_uniform(x: torch.Tensor, key: bytes, decimals: int) -> torch.Tensor:
    """A uniform in [0, 1) per input: a keyed hash of its values rounded to `decimals`."""
    grid = torch.round(x.detach().reshape(len(x), -1).double() * 10**decimals).to(torch.int64)
    values = [
        int.from_bytes(hmac.new(key, row.tobytes(), hashlib.sha256).digest()[:8], "little")
        for row in grid.cpu().numpy()
    ]
    return torch.tensor(values, dtype=torch.float64) / 2.0**64


def thresholds_of(
    fitted: FairlearnThresholdOptimizer,
) -> dict[int, tuple[list[float], list[float]]]:
    """Per group: fairlearn's two margin thresholds (ascending) and the probabilities of a
    positive answer below, between and above them — its derived predictor as a step function."""
    table = {}
    for group, mix in fitted.interpolated_thresholder_.interpolation_dict.items():
        ops = sorted(
            ((mix.operation0, mix.p0), (mix.operation1, mix.p1)), key=lambda op: op[0].threshold
        )
        if any(op.operator != ">" for op, _ in ops):
            raise DefconError("threshold_optimizer: fairlearn returned a flipped threshold rule")
        ignore = float(mix.get("p_ignore", 0.0))
        base = ignore * float(mix.get("prediction_constant", 0.0))
        keep = 1.0 - ignore
        levels = [base, base + keep * ops[0][1], base + keep * (ops[0][1] + ops[1][1])]
        table[int(group)] = ([float(op.threshold) for op, _ in ops], levels)
    return table


class FairThresholds(ServingWrapper):
    """The post-processed API: the model's margin shifted by the query's group threshold."""

    def __init__(
        self,
        model: nn.Module,
        reader: GroupReader,
        table: dict[int, tuple[list[float], list[float]]],
        key: bytes,
        decimals: int,
        constant_margin: float,
    ) -> None:
        super().__init__()
        self.model = model
        self.reader = reader
        size = int(reader.groups.max()) + 1
        self.thresholds: torch.Tensor
        self.levels: torch.Tensor
        self.register_buffer("thresholds", torch.full((size, 2), torch.inf, dtype=torch.float64))
        self.register_buffer("levels", torch.full((size, 3), -1.0, dtype=torch.float64))
        for group, (thresholds, levels) in table.items():
            self.thresholds[group] = torch.tensor(thresholds, dtype=torch.float64)
            self.levels[group] = torch.tensor(levels, dtype=torch.float64)
        self.key = key
        self.decimals = decimals
        self.constant_margin = constant_margin

    def saved_settings(self) -> dict[str, Any]:
        """The draws' key (keep a saved pipeline private), grid, constant margin and the
        sensitive columns; thresholds, levels and the group reader's patterns are tensors."""
        return {"key": self.key.hex(), "decimals": self.decimals,
                "constant_margin": self.constant_margin, "columns": list(self.reader.columns)}  # fmt: skip

    @classmethod
    def restore(
        cls, model: nn.Module, settings: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> FairThresholds:
        reader = GroupReader.restored(
            settings["columns"], tensors["reader.patterns"], tensors["reader.groups"]
        )
        wrapper = cls(model, reader, {}, bytes.fromhex(settings["key"]), settings["decimals"],
                      settings["constant_margin"])  # fmt: skip
        wrapper.thresholds = torch.empty_like(tensors["thresholds"])
        wrapper.levels = torch.empty_like(tensors["levels"])
        return wrapper

    def threshold(self, x: torch.Tensor) -> torch.Tensor:
        """Each query's margin threshold τ (float64, ±inf for answers that ignore the margin)."""
        groups = self.reader(x).cpu()
        u = keyed_uniform(x, self.key, self.decimals)
        levels, thresholds = self.levels[groups].cpu(), self.thresholds[groups].cpu()
        tau = torch.full_like(u, torch.inf)  # u above every level: never positive
        tau = torch.where(u <= levels[:, 2], thresholds[:, 1], tau)
        tau = torch.where(u <= levels[:, 1], thresholds[:, 0], tau)
        return torch.where(u <= levels[:, 0], -torch.inf, tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = margin(self.model, x)
        tau = self.threshold(x).to(m.device)
        positive = m.double() > tau
        shifted = (m.double() - torch.where(tau.isfinite(), tau, 0.0)).to(m.dtype)
        constant = torch.full_like(m, self.constant_margin)
        served = torch.where(tau.isfinite(), shifted, torch.where(positive, constant, -constant))
        tiny = torch.finfo(m.dtype).tiny  # float rounding must not tie or flip the answer
        served = torch.where(positive, served.clamp(min=tiny), served.clamp(max=-tiny))
        return torch.stack([-served / 2, served / 2], dim=1)


class ThresholdOptimizer(PostTrainingDefense):
    """fairlearn's ThresholdOptimizer (equalized odds) fitted on validation data, served."""

    Config: ClassVar[type[DefenseConfig]] = ThresholdOptimizerConfig
    config: ThresholdOptimizerConfig

    def _check(self, dataset: Dataset) -> tuple[int, ...]:
        problem = fairness_problem(self.name, dataset)
        if problem:
            raise DefconError(problem)
        if dataset.num_classes != 2:
            raise DefconError(
                f"{self.name} post-processes binary decisions; '{dataset.name}' has "
                f"{dataset.num_classes} classes"
            )
        return sensitive_columns(self.name, dataset, self.config.sensitive_columns)

    def model_problem(self, model: nn.Module, dataset: Dataset) -> str | None:
        try:
            self._check(dataset)
        except DefconError as error:
            return str(error)
        return None

    def fitting_records(self, model: nn.Module, env: Environment) -> Split:
        """The records fairlearn fits on (`fit_on`): never test data."""
        val, train = env.dataset.val, env.dataset.train
        if self.config.fit_on == "validation":
            return val
        gap = accuracy(model, train.x, train.y) - accuracy(model, val.x, val.y)
        overfit = gap > self.config.overfit_gap  # its scores on training records are optimistic
        env.record[f"{self.name}.overfit_gap"] = gap
        env.record[f"{self.name}.fitted_on_validation_only"] = float(overfit)
        return val if overfit else train.concat(val)

    def fit(self, model: nn.Module, env: Environment) -> FairlearnThresholdOptimizer:
        """fairlearn's optimizer fitted around `model` on `fitting_records`."""
        self._check(env.dataset)
        records = self.fitting_records(model, env)
        assert records.s is not None
        present = set(records.s.unique().tolist())
        if present != set(env.dataset.train.s.unique().tolist()):  # type: ignore[union-attr]
            raise DefconError(f"{self.name}: the records it is fitted on lack a sensitive group")
        optimizer = FairlearnThresholdOptimizer(
            estimator=TorchScorer(model),
            constraints="equalized_odds",
            objective=self.config.objective,
            grid_size=self.config.grid_size,
            prefit=True,
            predict_method="decision_function",
        )
        return optimizer.fit(
            records.x.numpy(),
            (records.y == POSITIVE_CLASS).long().numpy(),
            sensitive_features=records.s.numpy(),
        )

    def key(self, env: Environment) -> bytes:
        """The key of the answers' random draws, re-derivable from the run's seed."""
        return hashlib.sha256(f"thresholds:{derived_seed(env.seed, self.name)}".encode()).digest()

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """The post-processed API around a copy of `model`."""
        served = copy.deepcopy(model)
        served.eval()
        table = thresholds_of(self.fit(served, env))
        columns = self._check(env.dataset)
        reader = GroupReader(columns, env.dataset.train)
        cfg = self.config
        return FairThresholds(
            served, reader, table, self.key(env), cfg.decimals, cfg.constant_margin
        )

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """fairlearn's equalized-odds difference of `model`'s answers on the test split."""
        problem = fairness_problem(self.name, env.dataset)
        if problem:
            raise DefconError(problem)
        return {"equalized_odds_difference": equalized_odds_gap(model, env.dataset.test)}
