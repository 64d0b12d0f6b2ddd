"""Explanations by Integrated Gradients (Sundararajan et al., ICML 2017), with captum.

Mechanism. Opacity is mitigated by serving, next to each prediction, an attribution of it to the
input features. Integrated Gradients attributes f_t(x) − f_t(x') (t: the predicted class, x': a
baseline) by integrating the gradient along the straight path from x' to x. Its completeness
axiom says the attributions sum exactly to that difference; the integral is approximated with
`n_steps` points, and the gap between the sum of the attributions and the output difference (the
"convergence delta" captum returns) is how wrong the served explanation is.

`apply` returns `ExplainedModel`, a thin wrapper around a copy of the model whose forward pass is
the model's own (predictions unchanged) and whose `explain(x)` returns the attributions.

`measure` reports `explanation_error` on `n_inputs` seeded test inputs:

    explanation_error = mean_i |δ_i| / mean_i |f_t(x_i) − f_t(x')|

where δ_i is captum's convergence delta for input i (sum of attributions − output difference) and
t the class the model predicts for x_i; i.e. the share of the explained logit difference that
the attributions fail to account for (0 = complete explanations). Normalising by the explained
logit difference makes the number comparable across models whose logits have different scales
(adversarial training or DP-SGD shrink logits; a 0.05 absolute tolerance then means "5% more of
the explained difference is unaccounted for"). The baseline x' is the all-zero input (a black
image; every tabular feature at its minimum, features being min-max scaled). A model whose
function is not smooth along the path (e.g. one whose answers change discontinuously, like a
keyed output watermark) gets a large error.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients
from pydantic import Field
from torch import nn

from defcon.attacks import derived_seed
from defcon.defense import DefenseConfig, Environment, PostTrainingDefense
from defcon.models import predict

Method = Literal[
    "gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right"
]


class ExplanationsConfig(DefenseConfig):
    """Settings of the Integrated-Gradients explanations and of their evaluation."""

    n_steps: int = Field(default=50, ge=2, description="integration points along the path")
    method: Method = Field(default="gausslegendre", description="captum's integration rule")
    n_inputs: int = Field(default=200, ge=1, description="test inputs the error is averaged over")


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    config: ExplanationsConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attributions of the `target` logits to `x` from the all-zero baseline, and the deltas."""
    model.eval()
    ig = IntegratedGradients(model)
    attributions, delta = ig.attribute(
        x,
        baselines=torch.zeros_like(x),
        target=target,
        n_steps=config.n_steps,
        method=config.method,
        internal_batch_size=max(config.n_steps, 256),
        return_convergence_delta=True,
    )
    return attributions.detach(), delta.detach()


class ExplainedModel(nn.Module):
    """The model's predictions, unchanged, plus `explain(x)`: IG attributions of them."""

    def __init__(self, model: nn.Module, config: ExplanationsConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def explain(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Attributions (same shape as `x`) of the predicted (or given) class of each input."""
        if target is None:
            target = predict(self.model, x)
        attributions, _ = integrated_gradients(self.model, x, target, self.config)
        return attributions


class Explanations(PostTrainingDefense):
    """Serve Integrated-Gradients attributions with every prediction."""

    name: ClassVar[str] = "explanations"
    Config: ClassVar[type[DefenseConfig]] = ExplanationsConfig

    config: ExplanationsConfig

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """A wrapper around a copy of `model` that adds `explain`; predictions are unchanged."""
        return ExplainedModel(copy.deepcopy(model), self.config)

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Mean |convergence delta| over the mean explained logit difference, on test inputs."""
        test = env.dataset.test
        rng = np.random.default_rng(derived_seed(env.seed, "explanations:inputs"))
        index = np.sort(rng.permutation(len(test))[: self.config.n_inputs])
        x = test.x[torch.as_tensor(index)]
        target = predict(model, x)
        _, delta = integrated_gradients(model, x, target, self.config)
        with torch.no_grad():
            rows = torch.arange(len(x))
            gap = model(x)[rows, target] - model(torch.zeros_like(x))[rows, target]
        scale = float(gap.abs().mean())
        error = float(delta.abs().mean()) / max(scale, 1e-8)
        return {"explanation_error": error}
