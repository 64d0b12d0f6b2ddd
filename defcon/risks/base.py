"""What every risk attack provides, so `defcon audit` can run each one on any model unchanged.

An attack is not a defense: it has no stage and changes no model. It reads a trained model (the
one a pipeline serves) in an `Environment` and returns its metrics, each declared with the
direction in which it means *more* risk, so a change can be read as the risk rising or falling
whatever the metric. An attack that cannot apply to a dataset says why (`refusal`) before any
training. An attack whose adversary acts during training (a poisoner) sets `poisoned`: the audit
then measures it on models trained under that adversary, for every arm alike. An attack too costly
to run in every audit says so in `named_only`: it is measured only when the risk is named, and
listed as not measured, with that reason, otherwise.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from defcon.engine.data import Dataset, Split
from defcon.engine.defense import Environment
from defcon.errors import DefconError
from defcon.plugins import register_plugins
from defcon.vocabulary import Direction, Risk


class RiskMetric(BaseModel):
    """One number an attack reports, and which way it moves when the model is more at risk."""

    model_config = ConfigDict(frozen=True)

    name: str
    riskier: Direction | None = Field(
        description="higher: a larger value means more risk; None: a count reported beside the "
        "risk metrics (e.g. how many perturbations a metric was computed on), no direction"
    )
    primary: bool = Field(default=True, description="the metric that decides the risk's arrow")
    description: str
    undefined: str | None = Field(
        default=None, description="what a NaN value means, if it can be one"
    )
    min_effect: float | None = Field(
        default=None, ge=0, allow_inf_nan=False,
        description="the smallest change of this metric that counts as a change in the audit "
        "(docs/measurement.md, 'Effect sizes and coverage'); required for a directed metric",
    )  # fmt: skip

    @model_validator(mode="after")
    def _sized(self) -> RiskMetric:
        # a directed metric without a practical size would call any significant wobble a change
        if self.riskier is not None and self.min_effect is None:
            raise ValueError(f"risk metric {self.name} has a direction but no min_effect")
        return self


class AttackConfig(BaseModel):
    """Base of an attack's settings; part of the cache key of every measurement it makes."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class Lab:
    """What an attack may train besides reading the audited model.

    `victim(rows, tag, epochs)`: the audited pipeline (same defenses, same order) trained on the
    given rows of the clean training split; `shadow(split, tag, epochs)`: the plain recipe (the
    dataset's default architecture, no defense) on data the attacker holds. The audit supplies
    cached versions; `Lab.plain(env)` trains undefended victims directly (tests, scripts).
    """

    victim: Callable[[np.ndarray, str, int], nn.Module]
    shadow: Callable[[Split, str, int], nn.Module]

    @classmethod
    def plain(cls, env: Environment) -> Lab:
        from defcon.engine.models import arch_for
        from defcon.engine.seeds import derived_seed
        from defcon.engine.training import train

        def fit(split: Split, tag: str, epochs: int) -> nn.Module:
            arch = arch_for(env.dataset, width=env.profile.width)
            local = Environment(
                dataset=env.dataset, seed=derived_seed(env.seed, tag), profile=env.profile,
                arch=arch,
            )  # fmt: skip
            return train(local, split, arch=arch, epochs=epochs, description=tag).model

        def victim(rows: np.ndarray, tag: str, epochs: int) -> nn.Module:
            return fit(env.dataset.train.subset(rows).with_(origin=None), tag, epochs)

        return cls(victim=victim, shadow=fit)


class RiskAttack(ABC):
    """An attack that measures how susceptible a model is to one risk."""

    risk: ClassVar[Risk]
    reference: ClassVar[str]
    metrics: ClassVar[tuple[RiskMetric, ...]]
    poisoned: ClassVar[bool] = False
    named_only: ClassVar[str | None] = None  # why it runs only when named (its cost), if it does
    Config: ClassVar[type[AttackConfig]] = AttackConfig

    def __init__(self, config: AttackConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config()
        elif not isinstance(config, AttackConfig):
            config = self.Config.model_validate(dict(config))
        self.config = config

    @property
    def primary(self) -> RiskMetric:
        return next(m for m in self.metrics if m.primary)

    def metrics_for(self, dataset: Dataset) -> tuple[RiskMetric, ...]:
        """The metrics this attack reports on `dataset` (some apply to one data kind only)."""
        return self.metrics

    def unreported(self, dataset: Dataset) -> dict[str, str]:
        """Declared metrics left out on `dataset`, and why (shown as not measured)."""
        return {}

    def refusal(self, dataset: Dataset) -> str | None:
        """Why this attack does not apply to `dataset` (None when it does)."""
        return None

    def check(self, dataset: Dataset) -> None:
        problem = self.refusal(dataset)
        if problem is not None:
            raise DefconError(f"{self.risk.value} cannot be measured on {dataset.name}: {problem}")

    def run(self, model: nn.Module, env: Environment, lab: Lab | None = None) -> dict[str, float]:
        """The attack's metrics on `model` (refused with a DefconError where it does not apply)."""
        self.check(env.dataset)
        was_training = model.training
        model.eval()
        try:
            values = self.attack(model, env, lab or Lab.plain(env))
        finally:
            model.train(was_training)
        declared = {m.name for m in self.metrics_for(env.dataset)}
        if set(values) != declared:
            raise RuntimeError(
                f"{self.risk}: returned {sorted(values)}, declared {sorted(declared)}"
            )
        return values

    @abstractmethod
    def attack(self, model: nn.Module, env: Environment, lab: Lab) -> dict[str, float]:
        """The metrics (names as in `metrics`); the model is in eval mode."""

    def cache_key(self) -> dict[str, Any]:
        from defcon.engine.fingerprint import code_of, risks_code

        # an installed package's attack: its own source too, so a new version re-measures
        plugged = {} if type(self).__module__.startswith("defcon.") else {
            "plugin_code": code_of(type(self))
        }  # fmt: skip
        return {
            "risk": self.risk.value, "config": self.config.model_dump(mode="json"),
            "code": risks_code(), **plugged,
        }  # fmt: skip


RISK_GROUP = "defcon.risks"
ATTACKS: dict[Risk, type[RiskAttack]] = {}  # filled by `register_attack`, in audit order
# Risks no attack measures, and why (listed as not measured unless a plug-in covers one).
UNMEASURED: dict[Risk, str] = {
    Risk.DATA_MISUSE: "a property of how a dataset is used, not of a model an attacker can probe",
    Risk.OPACITY: "a property of what is explained to people, not of a model an attacker can probe",
}


def attack_problem(attack: object) -> str | None:
    """Why `attack` cannot be registered (None when it can)."""
    if not (isinstance(attack, type) and issubclass(attack, RiskAttack)):
        return f"{type(attack).__name__} {attack!r:.60} is not a RiskAttack subclass"
    if inspect.isabstract(attack):
        return f"{attack.__name__} leaves abstract methods unimplemented"
    risk = getattr(attack, "risk", None)
    if not isinstance(risk, Risk):
        return f"{attack.__name__}.risk is {risk!r:.40}, expected a Risk of defcon.vocabulary"
    if risk in ATTACKS:
        return f"risk '{risk.value}' is already measured by {ATTACKS[risk].__name__}"
    metrics = getattr(attack, "metrics", ())
    if not metrics or not all(isinstance(m, RiskMetric) for m in metrics):
        return f"{attack.__name__}.metrics must be a non-empty tuple of RiskMetric"
    if sum(m.primary for m in metrics) != 1:
        return f"{attack.__name__}.metrics must have exactly one primary metric"
    return None


def register_attack(attack: type[RiskAttack]) -> type[RiskAttack]:
    """Make `attack` the one that measures its risk in every audit; one attack per risk."""
    problem = attack_problem(attack)
    if problem is not None:
        raise DefconError(f"risk attack refused: {problem}")
    ATTACKS[attack.risk] = attack
    return attack


def risk_attacks() -> dict[Risk, type[RiskAttack]]:
    """Every risk attack: defcon's own, then those of installed packages (entry-point group
    `defcon.risks`, each naming a RiskAttack subclass for a risk none measures), loaded once."""
    register_plugins(
        RISK_GROUP, lambda value: value in ATTACKS.values(), attack_problem, register_attack
    )
    return dict(ATTACKS)


def unmeasured() -> dict[Risk, str]:
    """The risks no registered attack measures, and why."""
    attacks = risk_attacks()
    return {risk: why for risk, why in UNMEASURED.items() if risk not in attacks}


def needs_sensitive_attribute(dataset: Dataset) -> str | None:
    """The refusal of an attack that needs the groups of a sensitive attribute."""
    if dataset.sensitive_attribute is None or dataset.test.s is None:
        return f"it needs a sensitive attribute, and {dataset.name} has none (use adult or compas)"
    return None
