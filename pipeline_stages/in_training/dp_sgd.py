"""DP-SGD: differentially private training with Opacus (mitigates membership inference and data
reconstruction).

Mechanism (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016): every step clips
each sample's gradient to L2 norm ``max_grad_norm``, adds Gaussian noise of standard deviation
``noise_multiplier · max_grad_norm`` to their sum, and draws batches by Poisson sampling; the RDP
accountant turns (noise, sampling rate, steps) into an (ε, δ) guarantee, δ = 1/n. Opacus'
PrivacyEngine fills the *privacy_wrapper* slot: ``wrap`` replaces model, optimizer and loader by
GradSampleModule / DPOptimizer / Poisson DPDataLoader, ``unwrap`` records ε in
``run.record["dp_sgd.epsilon"]``, removes every Opacus hook and attribute and hands back the
plain module, optimizer and loader (no wrapper leaks out of training). BatchNorm mixes samples
and is refused by Opacus: ``adapt_arch`` asks for ``norm="group"``, so the model is built with
GroupNorm (on images exactly what ``ModuleValidator.fix`` puts there; on the MLP one group
over all features, since Opacus' 32 groups of two features would destroy it), and ``wrap``
still validates with ``ModuleValidator.validate`` (and fixes a model built elsewhere).

Effectiveness: ``epsilon`` as recorded by training (``inf`` for a model not trained with DP-SGD)
and ``mia_advantage``, the advantage TPR − FPR of a loss-threshold membership-inference attack
(Yeom et al., "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting", CSF
2018) on the given model. The attack predicts "member" when a sample's loss is at most a
threshold. Members are the records the model was trained on (``env.training_split``), split
into two seeded halves A and B. The threshold is calibrated (the one maximising TPR − FPR) on
half A against ``env.dataset.val``; the advantage is then evaluated on half B against
``env.dataset.test``, with equally many members and non-members in each phase, so nothing is
both tuned and scored on the same data. The value can be slightly negative on a model that
leaks nothing (sampling noise).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from pydantic import Field, model_validator
from torch import nn

from defcon.attacks import derived_seed
from defcon.data import Split
from defcon.defense import DefenseConfig, Environment, InTrainingDefense
from defcon.errors import DefconError

if TYPE_CHECKING:
    from defcon.models import ArchConfig
    from defcon.training import TrainingRun

EPSILON_KEY = "dp_sgd.epsilon"

# Opacus' hooks on the first layer fire although the inputs need no gradient; harmless.
warnings.filterwarnings(
    "ignore",
    message="Full backward hook is firing when gradients are computed",
    category=UserWarning,
)


class DPSGDConfig(DefenseConfig):
    """DP-SGD settings: give either `noise_multiplier` or `target_epsilon` (not both)."""

    max_grad_norm: float = Field(default=1.0, gt=0, description="per-sample clipping norm C")
    noise_multiplier: float | None = Field(default=1.0, gt=0, description="σ (noise = σ·C)")
    target_epsilon: float | None = Field(
        default=None, gt=0, description="ε to reach after all epochs; σ is derived from it"
    )
    mia_samples: int = Field(default=2000, ge=10, description="cap per phase and side for MIA")

    @model_validator(mode="before")
    @classmethod
    def _target_replaces_noise(cls, data: Any) -> Any:
        # Naming only a target ε means "derive σ from it": drop the default σ.
        if isinstance(data, dict) and data.get("target_epsilon") is not None:
            data = {**data}
            data.setdefault("noise_multiplier", None)
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> DPSGDConfig:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("dp_sgd: set exactly one of noise_multiplier and target_epsilon")
        return self


class DPSGD(InTrainingDefense):
    """Opacus DP-SGD in the privacy_wrapper slot; measured by ε and a loss-threshold MIA."""

    name: ClassVar[str] = "dp_sgd"
    Config: ClassVar[type[DefenseConfig]] = DPSGDConfig
    config: DPSGDConfig

    def __init__(self, config: DefenseConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._engines: dict[int, tuple[PrivacyEngine, torch.optim.Optimizer, Any, float]] = {}

    # ------------------------------------------------------------------ training hooks

    def adapt_arch(self, arch: ArchConfig) -> ArchConfig:
        """GroupNorm instead of BatchNorm (per-sample gradients need no cross-sample layers)."""
        return arch.model_copy(update={"norm": "group"})

    def wrap(self, run: TrainingRun) -> None:
        """Replace run.model / optimizer / loader by Opacus' private versions."""
        model = run.model
        if not ModuleValidator.is_valid(model):
            model = ModuleValidator.fix(model)
            run.optimizer = type(run.optimizer)(model.parameters(), **run.optimizer.defaults)
        ModuleValidator.validate(model, strict=True)
        n = len(run.train)
        delta = 1.0 / n
        with warnings.catch_warnings():  # "secure RNG turned off": fine for experiments, seeded
            warnings.simplefilter("ignore", UserWarning)
            engine = PrivacyEngine(accountant="rdp")
        noise = torch.Generator().manual_seed(derived_seed(run.env.seed, f"{self.name}:noise"))
        original = (run.optimizer, run.loader)
        common = {
            "module": model,
            "optimizer": run.optimizer,
            "data_loader": run.loader,
            "max_grad_norm": self.config.max_grad_norm,
            "poisson_sampling": True,
            "noise_generator": noise,
        }
        if self.config.target_epsilon is not None:
            wrapped = engine.make_private_with_epsilon(
                **common,
                target_epsilon=self.config.target_epsilon,
                target_delta=delta,
                epochs=run.epochs,
            )
        else:
            wrapped = engine.make_private(**common, noise_multiplier=self.config.noise_multiplier)
        run.model, run.optimizer, run.loader = wrapped
        self._engines[id(run)] = (engine, *original, delta)

    def unwrap(self, run: TrainingRun) -> None:
        """Record ε, strip every Opacus hook/attribute, restore plain model/optimizer/loader."""
        engine, optimizer, loader, delta = self._engines.pop(id(run))
        epsilon = engine.get_epsilon(delta) if engine.accountant.history else 0.0
        run.record[EPSILON_KEY] = float(epsilon)
        run.record[f"{self.name}.delta"] = delta
        run.record[f"{self.name}.noise_multiplier"] = float(run.optimizer.noise_multiplier)
        wrapper = run.model
        if hasattr(wrapper, "cleanup"):
            wrapper.cleanup()  # removes the hooks and grad_sample & co. from the parameters
        run.model = run.plain_model
        for module in run.model.modules():  # leftovers of an interrupted forward pass
            for attribute in ("activations", "max_batch_len"):
                if hasattr(module, attribute):
                    delattr(module, attribute)
        run.optimizer, run.loader = optimizer, loader

    # ------------------------------------------------------------------ effectiveness

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """ε spent in training (inf without DP-SGD) and the loss-threshold MIA advantage."""
        epsilon = env.record.get(EPSILON_KEY, math.inf)
        return {"mia_advantage": self.mia_advantage(model, env), "epsilon": float(epsilon)}

    def mia_advantage(self, model: nn.Module, env: Environment) -> float:
        """TPR − FPR of a loss-threshold attack calibrated on (members A, val), scored on (B, test)."""
        members = env.training_split
        if len(members) < 4:
            raise DefconError("dp_sgd: the training split is too small to measure membership")
        generator = torch.Generator().manual_seed(derived_seed(env.seed, f"{self.name}:mia"))
        order = torch.randperm(len(members), generator=generator)
        half_a, half_b = (
            members.subset(order[: len(order) // 2]),
            members.subset(order[len(order) // 2 :]),
        )
        cap = self.config.mia_samples
        calib_in, calib_out = _balanced(half_a, env.dataset.val, cap, generator)
        eval_in, eval_out = _balanced(half_b, env.dataset.test, cap, generator)
        was_training = model.training
        model.eval()
        threshold = _best_threshold(_losses(model, calib_in), _losses(model, calib_out))
        tpr = float((_losses(model, eval_in) <= threshold).float().mean())
        fpr = float((_losses(model, eval_out) <= threshold).float().mean())
        model.train(was_training)
        return tpr - fpr


def _balanced(
    inside: Split, outside: Split, cap: int, generator: torch.Generator
) -> tuple[Split, Split]:
    """Equally many members and non-members (at most `cap` each), seeded random subsets."""
    size = min(len(inside), len(outside), cap)
    pick_in = torch.randperm(len(inside), generator=generator)[:size]
    pick_out = torch.randperm(len(outside), generator=generator)[:size]
    return inside.subset(pick_in), outside.subset(pick_out)


@torch.no_grad()
def _losses(model: nn.Module, split: Split, batch_size: int = 1024) -> torch.Tensor:
    """Per-sample cross-entropy of `model` on `split`."""
    parts = [
        F.cross_entropy(model(x), y, reduction="none")
        for x, y in zip(split.x.split(batch_size), split.y.split(batch_size), strict=True)
    ]
    return torch.cat(parts)


def _best_threshold(member_losses: torch.Tensor, other_losses: torch.Tensor) -> float:
    """The loss threshold τ maximising TPR − FPR of the rule "member iff loss ≤ τ"."""
    values = torch.cat([member_losses, other_losses])
    is_member = torch.cat([torch.ones_like(member_losses), torch.zeros_like(other_losses)])
    order = torch.argsort(values)
    values, is_member = values[order], is_member[order]
    tpr = torch.cumsum(is_member, 0) / len(member_losses)
    fpr = torch.cumsum(1 - is_member, 0) / len(other_losses)
    gain = tpr - fpr
    # Only cut between distinct values (ties must fall on the same side).
    last_of_value = torch.ones_like(values, dtype=torch.bool)
    last_of_value[:-1] = values[1:] != values[:-1]
    gain = torch.where(last_of_value, gain, torch.full_like(gain, -math.inf))
    best = int(torch.argmax(gain))
    if float(gain[best]) <= 0:  # no threshold beats guessing: predict nobody is a member
        return float(values[0]) - 1.0
    return float(values[best])
