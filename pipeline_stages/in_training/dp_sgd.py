"""DP-SGD: differentially private training with Opacus (mitigates membership inference and data
reconstruction).

Mechanism (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016): every step clips
each sample's gradient to L2 norm ``max_grad_norm``, adds Gaussian noise of standard deviation
``noise_multiplier · max_grad_norm`` to their sum, and draws batches by Poisson sampling; the RDP
accountant turns (noise, sampling rate, steps) into an (ε, δ) guarantee per *row*. Opacus'
PrivacyEngine fills the *privacy_wrapper* slot: ``wrap`` replaces model, optimizer and loader by
GradSampleModule / DPOptimizer / Poisson DPDataLoader, ``unwrap`` records the guarantee, removes
every Opacus hook and attribute and hands back the plain module, optimizer and loader (no
wrapper leaks out of training). BatchNorm mixes samples and is refused by Opacus:
``adapt_arch`` asks for ``norm="group"`` (on images what ``ModuleValidator.fix`` puts there; on
the MLP one group over all features), and ``wrap`` still validates (and fixes a model built
elsewhere).

Accounting per person, not per row. A person is an original record (``Split.origins``): a
pre-training defense that appends stamped copies adds rows, not people, and counting rows would
*lower* ε (more rows, lower sampling rate, smaller δ = 1/n). So n = the number of distinct
origins in the training split, δ = 1/(10·n) (well below 1/n: a δ near 1/n would allow releasing
one record in the clear), and when one record contributes k > 1 rows the recorded ε is the
group-privacy guarantee for the person (Dwork & Roth, "The Algorithmic Foundations of
Differential Privacy", 2014, §2.3, Thm 2.2 and its (ε, δ) form: an (ε, δ')-DP mechanism is
(kε, k·e^{(k−1)ε}·δ')-DP for groups of k rows). It is computed by `group_epsilon`: the smallest
kε(δ') over a geometric grid of per-row δ' with k·e^{(k−1)ε(δ')}·δ' ≤ δ. With ``target_epsilon``
the target is the *per-row* ε at δ (Opacus derives σ from it); the recorded per-person ε is then
larger when k > 1. Records: ``dp_sgd.epsilon`` (per person), ``dp_sgd.row_epsilon``,
``dp_sgd.delta``, ``dp_sgd.group_size``, ``dp_sgd.people``, ``dp_sgd.noise_multiplier``.

Effectiveness is judged empirically: ``mia_auc`` and ``mia_tpr_at_1_fpr`` of offline RMIA
(Zarifzadeh, Liu, Shokri, ICML 2024; ``defcon.engine.rmia``, the same attack as the audit's membership
risk) with the profile's reference models trained on halves of the attacker's population data.
``epsilon`` (``inf`` without DP-SGD) stays in the record as the guarantee but is not judged: it
is a function of the configuration. Members are ``env.members`` (clean original records once
each); non-members the test split, equally many of each (seeded, at most ``mia_samples``). The
0.1 % and 1 % FPR thresholds come from ``env.calibration_data``, which neither the target nor
any reference saw; ``mia_calibration_fpr`` (a diagnostic) is the FPR the 1 % threshold realises
on the test non-members.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from pydantic import Field, model_validator
from torch import nn

from defcon.engine.canaries import audited_epsilon
from defcon.engine.data import Dataset, Split
from defcon.engine.defense import DefenseConfig, Environment, InTrainingDefense
from defcon.engine.devices import device_of
from defcon.engine.rmia import MembershipReading
from defcon.engine.seeds import derived_seed
from pipeline_stages.membership import membership_metrics, membership_reading

if TYPE_CHECKING:
    from defcon.engine.models import ArchConfig
    from defcon.engine.training import TrainingRun

EPSILON_KEY = "dp_sgd.epsilon"
DELTA_FACTOR = 10  # δ = 1 / (DELTA_FACTOR · people)
GRID_POINTS = 60  # per-row δ' tried by the group-privacy conversion
SMALLEST_DELTA = 1e-15

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
        default=None,
        gt=0,
        description="per-row ε to reach after all epochs (σ is derived from it); the recorded "
        "per-person ε is larger when a record contributes several rows",
    )
    mia_samples: int = Field(default=2000, ge=10, description="cap per side (members, others)")

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


def people_and_group_size(split: Split) -> tuple[int, int]:
    """(distinct original records, most rows from one record); a row of unknown origin (< 0)
    is a person of its own."""
    origins = split.origins
    known = origins[origins >= 0]
    people = int(torch.unique(known).numel()) + int((origins < 0).sum())
    group = int(torch.bincount(known).max()) if len(known) else 1
    return people, max(group, 1)


def group_epsilon(
    epsilon_at: Callable[[float], float], group_size: int, delta: float, points: int = GRID_POINTS
) -> float:
    """ε of a group of `group_size` rows at `delta`, from a per-row accountant `epsilon_at(δ')`.

    Group privacy (Dwork & Roth 2014, §2.3): (ε, δ')-DP per row gives
    (kε, k·e^{(k−1)ε}·δ')-DP per group of k. Search per-row δ' on a geometric grid from δ/k down
    to 1e-15 and keep the smallest kε(δ') whose group δ fits within `delta` (inf if none does).
    """
    if group_size <= 1:
        return float(epsilon_at(delta))
    k = group_size
    best = math.inf
    high = delta / k
    for row_delta in np.geomspace(high, min(SMALLEST_DELTA, high), points):
        epsilon = float(epsilon_at(float(row_delta)))
        if not math.isfinite(epsilon):
            continue
        # k·e^{(k−1)ε}·δ' ≤ δ, in logs (e^{(k−1)ε} overflows for large ε)
        if math.log(k) + (k - 1) * epsilon + math.log(row_delta) <= math.log(delta) + 1e-12:
            best = min(best, k * epsilon)
    return best


class DPSGD(InTrainingDefense):
    """Opacus DP-SGD in the privacy_wrapper slot; measured by per-person ε and a calibrated MIA."""

    Config: ClassVar[type[DefenseConfig]] = DPSGDConfig
    config: DPSGDConfig

    def __init__(self, config: DefenseConfig | dict[str, Any] | None = None, **bound: Any) -> None:
        super().__init__(config, **bound)  # bound: the spec, see Defense
        self._engines: dict[int, tuple[PrivacyEngine, torch.optim.Optimizer, Any]] = {}

    # ------------------------------------------------------------------ training hooks

    def adapt_arch(self, arch: ArchConfig) -> ArchConfig:
        """GroupNorm instead of BatchNorm (per-sample gradients need no cross-sample layers)."""
        return arch.model_copy(update={"norm": "group"})

    def model_problem(self, model: nn.Module, dataset: Dataset) -> str | None:
        """Opacus must be able to compute per-sample gradients, after its own fix if needed."""
        try:
            fixed = model if ModuleValidator.is_valid(model) else ModuleValidator.fix(model)
            errors = ModuleValidator.validate(fixed, strict=False)
        except Exception as error:  # a module Opacus cannot even inspect
            return f"dp_sgd: Opacus cannot inspect the model ({type(error).__name__}: {error})"
        if errors:
            return (
                f"dp_sgd: Opacus cannot compute per-sample gradients for this model even after "
                f"ModuleValidator.fix ({errors[0]})"
            )
        if device_of(model).type != "cpu" and list(model.parameters(recurse=False)):
            return (
                "dp_sgd: on an accelerator the model's top-level module must not hold parameters "
                "itself (wrap it in nn.Sequential)"
            )
        return None

    @staticmethod
    def delta_for(split: Split) -> float:
        """δ = 1/(10·people): well below 1/people, people = distinct original records."""
        return 1.0 / (DELTA_FACTOR * people_and_group_size(split)[0])

    def wrap(self, run: TrainingRun) -> None:
        """Replace run.model / optimizer / loader by Opacus' private versions."""
        model = run.model
        if not ModuleValidator.is_valid(model):
            model = ModuleValidator.fix(model)
            run.optimizer = type(run.optimizer)(model.parameters(), **run.optimizer.defaults)
        ModuleValidator.validate(model, strict=True)
        with warnings.catch_warnings():  # "secure RNG turned off": fine for experiments, seeded
            warnings.simplefilter("ignore", UserWarning)
            engine = PrivacyEngine(accountant="rdp")
        # Opacus draws the noise where the parameters are, so the generator must live there too.
        noise = torch.Generator(device=device_of(model)).manual_seed(
            derived_seed(run.env.seed, f"{self.name}:noise")
        )
        original = (run.optimizer, run.loader)
        common = {
            "module": model,
            "optimizer": run.optimizer,
            "data_loader": run.loader,
            "max_grad_norm": self.config.max_grad_norm,
            "poisson_sampling": True,
            "noise_generator": noise,
        }
        if self.config.target_epsilon is not None:  # per-row target at the person δ
            wrapped = engine.make_private_with_epsilon(
                **common,
                target_epsilon=self.config.target_epsilon,
                target_delta=self.delta_for(run.train),
                epochs=run.epochs,
            )
        else:
            wrapped = engine.make_private(**common, noise_multiplier=self.config.noise_multiplier)
        run.model, run.optimizer, run.loader = wrapped
        self._engines[id(run)] = (engine, *original)

    def unwrap(self, run: TrainingRun) -> None:
        """Record the per-person guarantee, strip every Opacus hook/attribute, restore the
        plain model/optimizer/loader."""
        engine, optimizer, loader = self._engines.pop(id(run))
        people, group = people_and_group_size(run.train)
        delta = self.delta_for(run.train)
        if engine.accountant.history:
            row_epsilon = float(engine.get_epsilon(delta))
            epsilon = group_epsilon(engine.get_epsilon, group, delta)
        else:
            row_epsilon = epsilon = 0.0  # no step taken, nothing spent
        run.record[EPSILON_KEY] = float(epsilon)
        run.record[f"{self.name}.row_epsilon"] = row_epsilon
        run.record[f"{self.name}.delta"] = delta
        run.record[f"{self.name}.group_size"] = float(group)
        run.record[f"{self.name}.people"] = float(people)
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
        """ε spent in training (inf without DP-SGD) and the calibrated membership attack."""
        epsilon = env.record.get(EPSILON_KEY, math.inf)
        audited = audited_epsilon(model, env.canaries, self.delta_for(env.training_split))
        return {
            **self.membership_attack(model, env),
            "epsilon": float(epsilon),
            "audited_epsilon": audited,
        }

    def membership_reading(self, model: nn.Module, env: Environment) -> MembershipReading:
        """Offline RMIA (`pipeline_stages.membership`, the audit's attack) on seeded, balanced
        members and non-members; the reading keeps the ROC points for a log-scale plot."""
        return membership_reading(model, env, self.name, self.config.mia_samples)

    def membership_attack(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """AUC and TPR at 0.1 % / 1 % FPR of offline RMIA."""
        return membership_metrics(model, env, self.name, self.config.mia_samples)
