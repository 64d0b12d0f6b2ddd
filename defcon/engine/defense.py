"""Stage contracts: what a defense mechanism must provide so the composer can use it unchanged.

- A pre-training defense maps a training split to a new one (keeping any secret it needs, such as
  a trigger, derived from the seed so it is reproducible without being stored); a transform of
  every input (served queries too) is a fixed input layer the model trains behind.
- An in-training defense fills slots of the one training loop (see `defcon.engine.training`).
- A post-training defense maps a trained model to a new model (or wraps its prediction API).
Every defense measures its own effectiveness on a given model, in a given `Environment`.
No defense modifies its inputs in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from defcon.catalog import builtin_catalog
from defcon.engine.attacks import BadNets
from defcon.engine.data import Dataset, Split
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError
from defcon.planning.profiles import Profile
from defcon.vocabulary import DefenseSpec, Slot, Stage

if TYPE_CHECKING:
    from defcon.engine.canaries import Canaries
    from defcon.engine.models import ArchConfig, InputLayer
    from defcon.engine.training import TrainingRun


NO_REFERENCES = (
    "this environment has no reference models: the composer supplies them; elsewhere call "
    "defcon.engine.training.supply_reference_models(env)"
)


@dataclass
class Environment:
    """The world a defense is applied and measured in.

    `dataset` holds the clean splits; `train_data` is the training split the model was actually
    trained on (after poisoning and pre-training defenses). `poisoner` is the active BadNets
    adversary when the scenario includes one. `record` holds facts logged during training (e.g.
    the ε that DP-SGD spent), keyed '<defense>.<fact>'. `deployed` names the defenses applied
    in this pipeline (a verification-only defense reads it to know whether it is deployed).
    `reference_model` returns an *independent* model: the threat model's fixed architecture
    trained by the plain recipe on `attacker_data` (disjoint from the owner's training data), for
    calibrated attacks and false-accusation checks; the composer supplies a cached one.
    `device` is where models compute (`defcon.engine.devices`); data and defenses' bookkeeping stay on
    the CPU.
    """

    dataset: Dataset
    seed: int
    profile: Profile
    poisoner: BadNets | None = None
    train_data: Split | None = None
    record: dict[str, float] = field(default_factory=dict)
    arch: ArchConfig | None = None
    deployed: frozenset[str] = frozenset()
    reference_model: Callable[[], nn.Module] | None = None
    population_model: Callable[[int], nn.Module] | None = None
    canaries: Canaries | None = (
        None  # the membership auditor's (`defcon.engine.canaries`), if planted
    )
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def training_split(self) -> Split:
        return self.train_data if self.train_data is not None else self.dataset.train

    @cached_property
    def members(self) -> Split:
        """The original clean records the model was trained on, once each.

        Poisoned rows, watermarked rows and appended copies are not members of the owner's data:
        membership inference and dataset inference are scored on these records only.
        """
        train = self.training_split
        rows = train.unchanged_rows(self.dataset.train)
        origins = train.origins[rows]
        keep = np.unique(origins.numpy(), return_index=True)[1]
        return train.subset(rows[torch.as_tensor(np.sort(keep))])

    @cached_property
    def _val_halves(self) -> tuple[Split, Split]:
        val = self.dataset.val
        order = np.random.default_rng(derived_seed(self.seed, "env:val-halves")).permutation(
            len(val)
        )
        half = len(val) // 2
        return val.subset(np.sort(order[:half])), val.subset(np.sort(order[half:]))

    @property
    def attacker_data(self) -> Split:
        """Population data an attacker holds (half of the validation split, seeded)."""
        return self._val_halves[0]

    @property
    def calibration_data(self) -> Split:
        """The other half of the validation split: non-members for calibrating thresholds,
        unseen by the model and by the reference model."""
        return self._val_halves[1]

    def independent_model(self) -> nn.Module:
        """The reference model (see the class docstring), as supplied: the composer's cached
        one, or `defcon.engine.training.supply_reference_models` (an environment cannot train)."""
        if self.reference_model is None:
            raise DefconError(NO_REFERENCES)
        return self.reference_model()

    def population_models(self) -> list[nn.Module]:
        """The profile's RMIA reference models, each trained by the plain recipe on a seeded half
        of `attacker_data` (never on the owner's data nor on `calibration_data`); the composer
        supplies cached ones, shared by every combination of a seed."""
        if self.population_model is None:
            raise DefconError(NO_REFERENCES)
        return [self.population_model(i) for i in range(self.profile.mia_references)]


class DefenseConfig(BaseModel):
    """Base of each defense's own settings; part of the cache key of every model it touches."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Defense(ABC):
    """A defense mechanism bound to its declaration in the catalog.

    The spec is the defense's identity: its name, stage and slots come from the catalog entry
    whose `implementation` names the class, never from the class itself, so one class can back
    several declarations and a user's class needs no name of its own.
    """

    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    # The metric names `measure` returns; when given, checked against the spec at load time.
    metric_names: ClassVar[tuple[str, ...]] = ()
    # Packages installed apart from the project that it imports (defcon.engine.optional); checked when
    # the defense is built, so a missing one is named before any training.
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        config: DefenseConfig | Mapping[str, Any] | None = None,
        *,
        spec: DefenseSpec | None = None,
    ) -> None:
        self.spec = spec if spec is not None else spec_of(type(self))
        if config is None:
            config = self.Config()
        elif not isinstance(config, DefenseConfig):
            config = self.Config.model_validate(dict(config))
        self.config = config

    @property
    def name(self) -> str:
        return self.spec.name

    def cache_key(self) -> dict[str, Any]:
        """What identifies this defense's effect on a model: its declaration and its settings.

        The slots are part of it: the training loop calls exactly the hooks of declared slots.
        """
        return {
            "name": self.name,
            "implementation": self.spec.implementation,
            "slots": sorted(str(slot) for slot in self.spec.slots),
            "config": self.config.model_dump(mode="json"),
        }

    def model_problem(self, model: nn.Module, dataset: Dataset) -> str | None:
        """Why this defense cannot work on (a freshly built copy of) `model` (None: it can).

        Asked before any training, so an architecture a defense cannot handle is refused with a
        reason instead of failing minutes later.
        """
        return None

    @abstractmethod
    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """This defense's metrics (names as declared in its spec) on `model`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def implementation_of(cls: type) -> str:
    """The `module:Class` string a spec names `cls` by."""
    return f"{cls.__module__}:{cls.__qualname__}"


def spec_of(cls: type[Defense]) -> DefenseSpec:
    """The one spec of the default catalog whose `implementation` is `cls`."""
    path = implementation_of(cls)
    found = [s for s in builtin_catalog().values() if s.implementation == path]
    if len(found) != 1:
        which = (
            "no spec" if not found else f"{len(found)} specs ({', '.join(s.name for s in found)})"
        )
        raise DefconError(
            f"{cls.__name__}: {which} of the installed catalog name '{path}' as implementation; "
            "pass the spec explicitly (Class(config, spec=...)) or use make_defense(name, catalog=...)"
        )
    return found[0]


# Which hooks of InTrainingDefense serve which slot: the loop calls a hook only for a declared slot.
SLOT_HOOKS: dict[Slot, tuple[str, ...]] = {
    Slot.PRIVACY_WRAPPER: ("wrap", "unwrap"),
    Slot.BATCH_TRANSFORM: ("transform_batch",),
    Slot.LOSS_TERM: ("loss_term",),
    Slot.PARAMETER_NOISE: ("noisy_step",),
    Slot.FINETUNE_PHASE: ("finetune",),
}


def contract_problems(cls: type, spec: DefenseSpec) -> list[str]:
    """Where a class and its spec disagree: stage contract, and slots vs overridden hooks.

    A hook overridden for an undeclared slot would never be called; a declared slot with no hook
    would silently do nothing. Both are declaration bugs, reported before anything runs.
    """
    base = {Stage.PRE: PreTrainingDefense, Stage.IN: InTrainingDefense,
            Stage.POST: PostTrainingDefense}[spec.stage]  # fmt: skip
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return [
            f"'{spec.name}' is a {spec.stage}-training defense, so its implementation "
            f"{getattr(cls, '__name__', cls)!s} must subclass defcon.engine.defense.{base.__name__}"
        ]
    problems = metric_problems(cls, spec)
    if spec.stage is not Stage.IN:
        return problems
    for slot, hooks in SLOT_HOOKS.items():
        overridden = [h for h in hooks if getattr(cls, h) is not getattr(InTrainingDefense, h)]
        if slot in spec.slots and not overridden:
            problems.append(
                f"'{spec.name}' declares slot {slot} but {cls.__name__} overrides none of its "
                f"hooks ({', '.join(hooks)})"
            )
        if slot not in spec.slots and overridden:
            problems.append(
                f"{cls.__name__} overrides {', '.join(overridden)} but '{spec.name}' does not "
                f"declare slot {slot}, so the training loop would never call it"
            )
    return problems


def returned_metric_names(cls: type) -> list[set[str]]:
    """The key sets of the dict literals `cls.measure` returns (`return {"name": ...}`), read
    from its source without running it; returns built any other way are not read."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.measure)))
    except (OSError, TypeError, SyntaxError):
        return []
    found = []
    for node in ast.walk(tree):
        value = node.value if isinstance(node, ast.Return) else None
        if (
            isinstance(value, ast.Dict)
            and value.keys
            and all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in value.keys)
        ):
            found.append({k.value for k in value.keys})  # type: ignore[union-attr]
    return found


def metric_problems(cls: type[Defense], spec: DefenseSpec) -> list[str]:
    """Metric names a class returns (its `metric_names`, or the keys of the dict literals its
    `measure` returns) that differ from its spec's: caught when the plug-in is loaded, not
    after training."""
    declared = {m.name for m in spec.metrics}
    claimed = [set(cls.metric_names)] if cls.metric_names else returned_metric_names(cls)
    for names in claimed:
        if names != declared:
            return [
                f"{cls.__name__}.measure returns metrics {sorted(names)} but the spec of "
                f"'{spec.name}' declares {sorted(declared)}; make them agree"
            ]
    return []


class PreTrainingDefense(Defense):
    """Transforms the training data before training.

    A transform that every input must go through (the served queries too, not only the training
    rows) is an `input_layer`: fitted here on the training data, trained behind and served
    inside the model, while the training split stays in the data's own space (so provenance,
    members and every defense reading the data keep working).
    """

    @abstractmethod
    def apply(self, train: Split, env: Environment) -> Split:
        """A new training split (the input is not modified)."""

    def input_layer(self, train: Split, env: Environment) -> InputLayer | None:
        """A fixed affine layer in front of the model, fitted on `train` (the split `apply`
        returned, as the model sees it behind earlier defenses' layers); None: no layer."""
        return None


class InTrainingDefense(Defense):
    """Contributes to the shared training loop through the slots its spec declares.

    The loop calls a hook only for the slots the spec declares, so a defense overrides exactly
    the hooks of its slots.
    """

    def adapt_arch(self, arch: ArchConfig) -> ArchConfig:
        """The architecture this defense needs (DP-SGD: GroupNorm instead of BatchNorm)."""
        return arch

    def wrap(self, run: TrainingRun) -> None:
        """privacy_wrapper: replace run.model / run.optimizer / run.loader before the loop."""

    def unwrap(self, run: TrainingRun) -> None:
        """privacy_wrapper: restore a plain nn.Module in run.model after the loop."""

    def transform_batch(
        self, run: TrainingRun, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """batch_transform: the batch to train on (called with privacy hooks disabled)."""
        return x, y, s

    def loss_term(
        self,
        run: TrainingRun,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        """loss_term: a term added to the batch loss."""
        return logits.new_zeros(())

    def noisy_step(self, run: TrainingRun) -> None:
        """parameter_noise: after the batch's backward pass and before the optimizer step."""

    def finetune(self, run: TrainingRun) -> None:
        """finetune_phase: runs after the main loop on run.model (a plain nn.Module)."""


class ServingWrapper(nn.Module):
    """A prediction API placed in front of a model (an output watermark, an explanation service).

    The wrapped weights are `self.model`. A thief who copies the model holds the weights, not the
    API: `weights_of` removes serving wrappers, so checks made on "the copy a thief holds" read
    the weights.
    """

    model: nn.Module

    def saved_settings(self) -> dict[str, Any] | None:
        """What rebuilds this wrapper around its model besides its own tensors (JSON values),
        for `defcon.measure.artefact`; None: it cannot be saved, so `--save-model` refuses it."""
        return None

    @classmethod
    def restore(
        cls, model: nn.Module, settings: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> ServingWrapper:
        """The wrapper `saved_settings` described, around `model`; `tensors` (its own state
        dict entries) size its buffers and are loaded into it afterwards."""
        raise NotImplementedError(f"{cls.__name__} cannot be restored from a saved pipeline")


def weights_of(model: nn.Module) -> nn.Module:
    """The model's weights without the serving wrappers in front of them."""
    while isinstance(model, ServingWrapper):
        model = model.model
    return model


def find_served(model: nn.Module, kind: type[nn.Module]) -> nn.Module | None:
    """The first module of type `kind` in the served pipeline (outermost first)."""
    return next((m for m in model.modules() if isinstance(m, kind)), None)


class PostTrainingDefense(Defense):
    """Transforms a trained model, or wraps its prediction API."""

    @abstractmethod
    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """A new protected model (the input model is not modified)."""
