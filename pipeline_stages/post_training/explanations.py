"""Explanations by Integrated Gradients (Sundararajan et al., ICML 2017), with captum.

Mechanism. Opacity is mitigated by serving, next to each prediction, an attribution of it to the
input features. Integrated Gradients attributes f_t(x) − f_t(x') (t: the predicted class, x': a
baseline) by integrating the gradient along the straight path from x' to x. Its completeness
axiom says the attributions sum exactly to that difference; the integral is approximated with
`n_steps` points, and the gap between the sum of the attributions and the output difference (the
"convergence delta" captum returns) is how wrong the served explanation is.

`apply` returns `ExplainedModel`, a serving wrapper around a copy of the model whose forward pass
is the model's own (predictions unchanged) and whose `explain(x)` returns the attributions.
Convergence is the defense's own business: `apply` runs a convergence check on (at most
`calibration_inputs` seeded) inputs of `env.calibration_data`, starting at the configured
`n_steps` and doubling (or jumping by the power of two the observed convergence rate predicts)
until the relative completeness error (below) is at most `target_error` or `max_steps` is
reached; the wrapper serves with the chosen number of steps (logged as
'explanations.n_steps' in `env.record`). A model with small logits and GroupNorm (DP-SGD) needs
many more steps than a plain one for the same error; a fixed step count would report that
integration artefact as an interaction.

`measure` scores what the explanations defense serves: it finds the `ExplainedModel` in the
served pipeline (wherever later wrappers such as an output-watermark API put it) and reports the
faithfulness of its attributions by insertion and deletion (Petsiuk, Das, Saenko, RISE, BMVC
2018; Samek et al., Evaluating the visualization of what a deep neural network has learned, IEEE
TNNLS 2017), on `n_inputs` seeded test inputs:

    explanation_faithfulness = mean_i [AUC_insertion(x_i) − AUC_deletion(x_i)]

Features are ranked by their attribution to the explained class t (most positive first); deletion
replaces the top k features by the baseline (0) and insertion starts from the baseline and puts
back the top k, for k on a grid of `curve_points` + 1 equal fractions of the features; each curve
is the explainer's model's softmax probability of t, and its area is the trapezoid rule over the
fraction axis. An attribution that finds the evidence for t makes the probability rise fast on
insertion and fall fast on deletion (up to +1); a ranking unrelated to the model reads near 0;
a misleading one is negative. Unlike completeness (which IG satisfies by construction), this can
fail: a model whose IG attributions do not single out what drives it reads as low as a random one.

The diagnostic `explained_class_agreement` (reported, not judged) is the share of those inputs
whose explained class equals the class the whole served pipeline answers: a wrapper in front of
the explainer that changes some answers (DAWN's keyed wrong answers) lowers it by the share of
answers it changes, while the explanations themselves are unchanged.

Undefended reading. When the pipeline serves no explanations (no `ExplainedModel`: the defense is
not deployed, e.g. the no-defense model), the auditor can still rank features trivially: the same
insertion − deletion score of a seeded random ranking, on the pipeline's own weights and inputs,
which is what the defense's attributions must beat (not a constant). `explained_class_agreement`
is 0.0 (no answer comes with an explanation of its class).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients
from pydantic import Field
from torch import nn

from defcon.engine.data import Split
from defcon.engine.defense import (
    DefenseConfig,
    Environment,
    PostTrainingDefense,
    ServingWrapper,
    find_served,
    weights_of,
)
from defcon.engine.models import predict
from defcon.engine.seeds import derived_seed

Method = Literal[
    "gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right"
]


class ExplanationsConfig(DefenseConfig):
    """Settings of the Integrated-Gradients explanations and of their evaluation."""

    n_steps: int = Field(default=50, ge=2, description="integration points tried first")
    method: Method = Field(default="gausslegendre", description="captum's integration rule")
    n_inputs: int = Field(default=100, ge=1, description="test inputs it is averaged over")
    curve_points: int = Field(
        default=20,
        ge=2,
        description="insertion/deletion: steps of the feature-fraction grid (capped at the "
        "number of features)",
    )
    target_error: float = Field(
        default=0.01,
        gt=0,
        description="convergence check: double n_steps until the relative completeness error "
        "on calibration inputs is at most this",
    )
    max_steps: int = Field(
        default=512, ge=2, description="convergence check: the most integration points served"
    )
    calibration_inputs: int = Field(
        default=50, ge=1, description="convergence check: calibration inputs it is run on"
    )


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    n_steps: int,
    method: Method = "gausslegendre",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attributions of the `target` logits to `x` from the all-zero baseline, and the deltas."""
    model.eval()
    ig = IntegratedGradients(model)
    attributions, delta = ig.attribute(
        x,
        baselines=torch.zeros_like(x),
        target=target,
        n_steps=n_steps,
        method=method,
        internal_batch_size=max(n_steps, 256),
        return_convergence_delta=True,
    )
    return attributions.detach(), delta.detach()


def relative_error(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, target: torch.Tensor):
    """mean |δ| over the mean |f_t(x) − f_t(0)| the attributions explain."""
    with torch.no_grad():
        rows = torch.arange(len(x))
        gap = model(x)[rows, target] - model(torch.zeros_like(x))[rows, target]
    return float(delta.abs().mean()) / max(float(gap.abs().mean()), 1e-8)


def completeness_error(
    model: nn.Module, x: torch.Tensor, n_steps: int, method: Method = "gausslegendre"
) -> float:
    """Relative completeness error of IG with `n_steps` points on `x` (predicted classes)."""
    target = predict(model, x)
    _, delta = integrated_gradients(model, x, target, n_steps, method)
    return relative_error(model, x, delta, target)


def insertion_deletion(
    model: nn.Module, x: torch.Tensor, scores: torch.Tensor, target: torch.Tensor, points: int
) -> torch.Tensor:
    """Per input, area under the insertion curve minus area under the deletion curve.

    Features ranked by `scores` (highest first) are put into the all-zero baseline (insertion)
    or replaced by it (deletion) on a grid of `points` + 1 equal fractions; each curve is the
    softmax probability of `target`, integrated over the fraction axis by the trapezoid rule.
    """
    n, d = len(x), x[0].numel()
    flat = x.reshape(n, d)
    order = scores.reshape(n, d).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(d).expand(n, d).contiguous())
    steps = min(points, d)
    counts = [round(k * d / steps) for k in range(steps + 1)]
    rows = torch.arange(n)
    inserted, deleted = [], []
    model.eval()
    with torch.no_grad():
        for count in counts:
            top = (rank < count).to(flat.dtype)
            for curve, kept in ((inserted, flat * top), (deleted, flat * (1 - top))):
                probs = torch.softmax(model(kept.reshape(x.shape)), dim=1)
                curve.append(probs[rows, target])
    trapezoid = torch.ones(steps + 1)
    trapezoid[0] = trapezoid[-1] = 0.5
    difference = torch.stack(inserted, 1) - torch.stack(deleted, 1)
    return (difference * trapezoid).sum(1) / steps


def random_scores(x: torch.Tensor, seed: int) -> torch.Tensor:
    """The trivial explainer: a seeded random ranking of the features of each input."""
    generator = torch.Generator().manual_seed(derived_seed(seed, "explanations:random"))
    return torch.rand(x.shape, generator=generator)


def seeded_inputs(split: Split, count: int, seed: int, salt: str) -> torch.Tensor:
    rng = np.random.default_rng(derived_seed(seed, f"explanations:{salt}"))
    index = np.sort(rng.permutation(len(split))[:count])
    return split.x[torch.as_tensor(index)]


class ExplainedModel(ServingWrapper):
    """The model's predictions, unchanged, plus `explain(x)`: IG attributions of them, computed
    with `n_steps` integration points (chosen by the convergence check in `apply`)."""

    def __init__(
        self, model: nn.Module, config: ExplanationsConfig, n_steps: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.n_steps = n_steps if n_steps is not None else config.n_steps

    def saved_settings(self) -> dict[str, Any]:
        """The settings and the integration points the convergence check chose."""
        return {"config": self.config.model_dump(mode="json"), "n_steps": self.n_steps}

    @classmethod
    def restore(
        cls, model: nn.Module, settings: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> ExplainedModel:
        config = ExplanationsConfig.model_validate(settings["config"])
        return cls(model, config, int(settings["n_steps"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def explained_class(self, x: torch.Tensor) -> torch.Tensor:
        """The class `explain` attributes by default: the explainer's model's prediction."""
        return predict(self.model, x)

    def explain_with_delta(
        self, x: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The served attributions and their convergence deltas."""
        if target is None:
            target = self.explained_class(x)
        return integrated_gradients(self.model, x, target, self.n_steps, self.config.method)

    def explain(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Attributions (same shape as `x`) of the predicted (or given) class of each input."""
        return self.explain_with_delta(x, target)[0]


class Explanations(PostTrainingDefense):
    """Serve Integrated-Gradients attributions with every prediction."""

    Config: ClassVar[type[DefenseConfig]] = ExplanationsConfig

    config: ExplanationsConfig

    def converged_steps(self, model: nn.Module, env: Environment) -> tuple[int, float]:
        """The convergence check: (n_steps, its relative error on calibration inputs).

        From the configured `n_steps`, multiply the step count by powers of two until the error
        is at most `target_error` or `max_steps` is reached. After two tries the observed rate
        (error ∝ steps^-r) predicts the power of two needed, so a slowly converging model jumps
        there instead of paying for every doubling; each step count is verified by measuring.
        """
        cfg = self.config
        x = seeded_inputs(env.calibration_data, cfg.calibration_inputs, env.seed, "calibration")
        steps = cfg.n_steps
        error = completeness_error(model, x, steps, cfg.method)
        previous: tuple[int, float] | None = None
        while error > cfg.target_error and steps < cfg.max_steps:
            factor = 2
            if previous is not None and 0 < error < previous[1]:
                rate = math.log(previous[1] / error) / math.log(steps / previous[0])
                # log2 of the steps needed, in the log domain: a rate near zero (a model whose
                # error barely falls) would overflow the power; the cap is max_steps anyway
                doublings = math.log2(error / cfg.target_error) / rate
                ceiling = math.ceil(math.log2(cfg.max_steps / steps))
                exponent = math.ceil(doublings) if doublings < ceiling else ceiling  # inf-safe
                factor = 2 ** max(1, exponent)
            previous = (steps, error)
            steps = min(steps * factor, cfg.max_steps)
            error = completeness_error(model, x, steps, cfg.method)
        return steps, error

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """A wrapper around a copy of `model` that adds `explain`; predictions are unchanged."""
        model = copy.deepcopy(model)
        steps, error = self.converged_steps(model, env)
        env.record["explanations.n_steps"] = float(steps)
        env.record["explanations.calibration_error"] = error
        return ExplainedModel(model, self.config, steps)

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """The served explanations' insertion − deletion faithfulness (a seeded random ranking
        when none are served), and whether they explain the class the pipeline answers."""
        cfg = self.config
        x = seeded_inputs(env.dataset.test, cfg.n_inputs, env.seed, "inputs")
        explained = find_served(model, ExplainedModel)
        if explained is None:
            weights = weights_of(model)
            target = predict(weights, x)
            scores = random_scores(x, env.seed)
            faithfulness = insertion_deletion(weights, x, scores, target, cfg.curve_points)
            return {
                "explanation_faithfulness": float(faithfulness.mean()),
                "explained_class_agreement": 0.0,
            }
        target = explained.explained_class(x)
        attributions = explained.explain(x, target)
        faithfulness = insertion_deletion(
            explained.model, x, attributions, target, cfg.curve_points
        )
        agreement = float((target == predict(model, x)).float().mean())
        return {
            "explanation_faithfulness": float(faithfulness.mean()),
            "explained_class_agreement": agreement,
        }
