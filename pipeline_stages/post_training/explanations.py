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
served pipeline (wherever later wrappers such as an output-watermark API put it) and reports,
on `n_inputs` seeded test inputs,

    explanation_error = mean_i |δ_i| / mean_i |f_t(x_i) − f_t(x')|

where δ_i is the convergence delta of the served attributions of input i (sum of attributions −
output difference), f the explainer's own model and t the class it explains (its prediction);
i.e. the share of the explained logit difference that the attributions fail to account for
(0 = complete explanations). Normalising by the explained logit difference makes the number
comparable across models whose logits have different scales (adversarial training or DP-SGD
shrink logits; a 0.05 absolute tolerance then means "5% more of the explained difference is
unaccounted for"). The baseline x' is the all-zero input (a black image; every tabular feature at
its minimum, features being min-max scaled).

The diagnostic `explained_class_agreement` (reported, not judged) is the share of those inputs
whose explained class equals the class the whole served pipeline answers: a wrapper in front of
the explainer that changes some answers (DAWN's keyed wrong answers) lowers it by the share of
answers it changes, while the explanations themselves are unchanged.

Undefended reading. When the pipeline serves no explanations (no `ExplainedModel`: the defense is
not deployed, e.g. the no-defense model), nothing of f_t(x) − f_t(x') is accounted for:
`explanation_error` is 1.0 and `explained_class_agreement` is 0.0 (no answer comes with an
explanation of its class; 1.0 would credit a pipeline that explains nothing with perfect
consistency).
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar, Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients
from pydantic import Field
from torch import nn

from defcon.attacks import derived_seed
from defcon.data import Split
from defcon.defense import (
    DefenseConfig,
    Environment,
    PostTrainingDefense,
    ServingWrapper,
    find_served,
)
from defcon.models import predict

Method = Literal[
    "gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right"
]

UNDEFENDED = {"explanation_error": 1.0, "explained_class_agreement": 0.0}


class ExplanationsConfig(DefenseConfig):
    """Settings of the Integrated-Gradients explanations and of their evaluation."""

    n_steps: int = Field(default=50, ge=2, description="integration points tried first")
    method: Method = Field(default="gausslegendre", description="captum's integration rule")
    n_inputs: int = Field(default=100, ge=1, description="test inputs the error is averaged over")
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
                needed = (error / cfg.target_error) ** (1 / rate)
                factor = 2 ** max(1, math.ceil(math.log2(needed)))
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
        """The served explanations' relative completeness error, and whether they explain the
        class the pipeline answers (see the module docstring)."""
        explained = find_served(model, ExplainedModel)
        if explained is None:
            return dict(UNDEFENDED)
        x = seeded_inputs(env.dataset.test, self.config.n_inputs, env.seed, "inputs")
        target = explained.explained_class(x)
        _, delta = explained.explain_with_delta(x, target)
        error = relative_error(explained.model, x, delta, target)
        agreement = float((target == predict(model, x)).float().mean())
        return {"explanation_error": error, "explained_class_agreement": agreement}
