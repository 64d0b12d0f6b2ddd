"""Certified trigger-set watermark, trained with parameter noise.

Bansal et al., "Certified Neural Network Watermarks with Randomized Smoothing", ICML 2022: the
owner trains the model to classify a secret *trigger set* (k out-of-distribution inputs with
random labels) as its watermark labels, and trains it to keep doing so when Gaussian noise is
added to the parameters. Because the watermark then holds for a whole neighbourhood of the
weights (randomised smoothing in parameter space), a thief who moves the weights by a bounded ℓ2
distance (fine-tuning, pruning) cannot remove it; the paper certifies that radius.

Mechanism, in the two training-loop slots the spec declares:

- *loss_term*: ``weight · CE(f_θ(X_wm), y_wm)`` on the trigger set at the clean parameters;
- *parameter_noise*: after the batch's backward pass, for each of ``noise_samples`` draws
  δ ~ N(0, σ²I) it sets θ ← θ + δ, back-propagates ``noise_weight / noise_samples ·
  CE(f_θ+δ(X_wm), y_wm)`` (accumulating into the gradients the optimizer is about to use), and
  restores θ exactly. The noisy draws run every ``noise_every`` batches.

The trigger-set forward passes use the normalisation layers' running statistics (eval mode), so
the noise images neither pollute the BatchNorm statistics nor are learnt under statistics they
will not meet at inference. The trigger set is k seeded uniform-noise inputs of the dataset's
shape (images or [0, 1]-scaled tabular rows) with seeded uniform random labels, so an
independent model agrees with ≈ 1/num_classes of them; it is re-derived from (config, seed,
dataset) whenever it is needed, never stored.

DP-SGD: this defense refuses to train inside a privacy wrapper (Opacus' GradSampleModule and
DPOptimizer): the DP optimizer replaces every parameter's gradient by the clipped, noised sum of
the training batch's per-sample gradients, so the watermark gradients would be silently dropped,
and pushing the trigger set through the wrapper would add its per-sample gradients onto those of
the first training samples of the batch. It raises a DefconError instead.

Effectiveness: watermark accuracy, the share of the trigger set classified as its watermark
labels by the given model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from defcon.engine.defense import DefenseConfig, Environment, InTrainingDefense
from defcon.engine.models import predict
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError

if TYPE_CHECKING:
    from defcon.engine.training import TrainingRun

_NORMS = (nn.modules.batchnorm._BatchNorm,)


class CertifiedWatermarkConfig(DefenseConfig):
    """Settings of the trigger set and of the parameter-noise training."""

    trigger_set_size: int = Field(default=100, ge=1, description="k: inputs in the trigger set")
    weight: float = Field(default=0.5, ge=0, description="weight of the clean trigger-set loss")
    noise_std: float = Field(default=0.02, gt=0, description="σ of the parameter noise")
    noise_samples: int = Field(default=1, ge=1, description="noise draws per noisy step")
    noise_weight: float = Field(default=0.5, ge=0, description="total weight of the noisy losses")
    noise_every: int = Field(default=1, ge=1, description="a noisy step every this many batches")


@contextlib.contextmanager
def _frozen_norms(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in eval mode (running statistics, not updated) for the duration."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.training]
    for module in norms:
        module.eval()
    try:
        yield
    finally:
        for module in norms:
            module.train()


@dataclass
class _RunState:
    """What one training run keeps: the trigger set, the noise generator, the steps taken."""

    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator
    steps: int = 0


class CertifiedWatermark(InTrainingDefense):
    """Trigger-set watermark trained under Gaussian parameter noise; measured on the trigger set."""

    Config: ClassVar[type[DefenseConfig]] = CertifiedWatermarkConfig
    config: CertifiedWatermarkConfig

    # ------------------------------------------------------------------ the secret

    def trigger_set(self, env: Environment) -> tuple[torch.Tensor, torch.Tensor]:
        """The k seeded noise inputs and their seeded random watermark labels."""
        rng = np.random.default_rng(derived_seed(env.seed, self.name))
        k = self.config.trigger_set_size
        x = rng.random((k, *env.dataset.input_shape), dtype=np.float32)
        y = rng.integers(env.dataset.num_classes, size=k)
        return torch.from_numpy(x), torch.from_numpy(y).long()

    def _run_state(self, run: TrainingRun) -> _RunState:
        if run.model is not run.plain_model:
            raise DefconError(
                f"{self.name} cannot train inside a privacy wrapper ({type(run.model).__name__}, "
                "e.g. DP-SGD's Opacus): the DP optimizer replaces each gradient by the clipped, "
                "noised per-sample gradients of the training batch, so the trigger-set and "
                "parameter-noise gradients would be silently dropped"
            )

        def fresh() -> _RunState:
            x, y = self.trigger_set(run.env)
            noise = derived_seed(run.env.seed, f"{self.name}:noise")
            return _RunState(x, y, torch.Generator().manual_seed(noise))

        return run.state(self.name, fresh)

    # ------------------------------------------------------------------ training hooks

    def loss_term(
        self,
        run: TrainingRun,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        """weight · CE on the trigger set at the current (clean) parameters."""
        state = self._run_state(run)
        wm_x, wm_y = state.x, state.y
        if self.config.weight == 0:
            return logits.new_zeros(())
        with _frozen_norms(run.model):
            return self.config.weight * F.cross_entropy(run.model(wm_x), wm_y)

    def noisy_step(self, run: TrainingRun) -> None:
        """Accumulate the trigger-set gradients at noisy parameters θ + δ; θ is restored."""
        state = self._run_state(run)
        wm_x, wm_y, generator = state.x, state.y, state.generator
        state.steps += 1
        if self.config.noise_weight == 0 or (state.steps - 1) % self.config.noise_every:
            return
        model = run.model
        params = [p for p in model.parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in params]
        scale = self.config.noise_weight / self.config.noise_samples
        try:
            for _ in range(self.config.noise_samples):
                with torch.no_grad():
                    for p in params:
                        noise = torch.randn(p.shape, generator=generator).to(p.device)
                        p.add_(noise * self.config.noise_std)
                with _frozen_norms(model):
                    loss = scale * F.cross_entropy(model(wm_x), wm_y)
                loss.backward()
                with torch.no_grad():
                    for p, original in zip(params, saved, strict=True):
                        p.copy_(original)
        finally:
            with torch.no_grad():
                for p, original in zip(params, saved, strict=True):
                    p.copy_(original)

    # ------------------------------------------------------------------ effectiveness

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Share of the trigger set classified as its watermark labels by `model`."""
        x, y = self.trigger_set(env)
        return {"watermark_accuracy": float((predict(model, x) == y).float().mean())}
