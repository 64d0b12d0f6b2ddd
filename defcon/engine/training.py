"""The one training loop, with named slots that in-training defenses fill without being modified.

Per batch: batch_transform (privacy hooks disabled while it runs) → forward → cross-entropy plus
every loss_term → backward → parameter_noise steps → optimizer step. Before the loop the
privacy_wrapper may wrap model/optimizer/loader; after it, it unwraps, then the finetune_phase
runs. Two defenses that need the same exclusive slot cannot share the loop (structural clash).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from defcon.checker.base import structural_clashes
from defcon.engine.data import Split
from defcon.engine.defense import Environment, InTrainingDefense
from defcon.engine.devices import place
from defcon.engine.models import (
    ArchConfig,
    InputLayer,
    WithInputLayer,
    accuracy,
    arch_for,
    build_model,
    fold_input_layer,
    model_label,
    nonfinite_logits,
)
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError
from defcon.terminal import printable
from defcon.user_code import UserCodeError, defense_call
from defcon.vocabulary import Slot

CONVERGED_GAIN = 0.01  # a last epoch that still adds more validation accuracy is not converged
CONVERGENCE_WINDOW = 10  # epochs whose validation accuracy the convergence check reads


State = TypeVar("State")  # what a defense keeps for one training run


@dataclass
class TrainingRun:
    """The mutable state of one training run, visible to the defenses' hooks."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    env: Environment
    train: Split
    epochs: int
    lr: float
    batch_size: int
    record: dict[str, float] = field(default_factory=dict)
    epoch: int = 0
    scratch: dict[str, Any] = field(default_factory=dict, repr=False)

    def state(self, owner: str, fresh: Callable[[], State]) -> State:
        """What defense `owner` keeps for this run (multipliers, a trigger set, a generator),
        made by `fresh` on first use. It lives and dies with the run, so one defense instance
        that trains several models (the composer's arms) starts each one afresh."""
        if owner not in self.scratch:
            self.scratch[owner] = fresh()
        return self.scratch[owner]

    @property
    def plain_model(self) -> nn.Module:
        """The model without any privacy wrapper (Opacus' GradSampleModule keeps it in _module)."""
        model = self.model
        while hasattr(model, "_module") and isinstance(model._module, nn.Module):
            model = model._module
        return model

    @contextlib.contextmanager
    def hooks_disabled(self) -> Iterator[nn.Module]:
        """Run code on the plain model with per-sample-gradient hooks off (e.g. an attack)."""
        wrapper = self.model
        toggle = hasattr(wrapper, "disable_hooks") and hasattr(wrapper, "enable_hooks")
        if toggle:
            wrapper.disable_hooks()
        try:
            yield self.plain_model
        finally:
            if toggle:
                wrapper.enable_hooks()
            self.model.train()


@dataclass
class TrainedModel:
    """A trained model, the architecture to rebuild it, and facts recorded while training."""

    model: nn.Module
    arch: ArchConfig
    record: dict[str, float]


def _users(defenses: Sequence[InTrainingDefense], slot: Slot) -> list[InTrainingDefense]:
    return [d for d in defenses if slot in d.spec.slots]


def _show_progress() -> bool:
    setting = os.environ.get("DEFCON_PROGRESS")
    if setting is not None:
        return setting not in {"0", "false", "no"}
    return sys.stderr.isatty()


def train(
    env: Environment,
    train_split: Split,
    defenses: Sequence[InTrainingDefense] = (),
    *,
    arch: ArchConfig | None = None,
    epochs: int | None = None,
    description: str = "training",
    input_layer: InputLayer | None = None,
    patience: int | None = None,
) -> TrainedModel:
    """Train a fresh model on `train_split` with the given in-training defenses plugged in.

    With an `input_layer` (pre-training defenses' transform of every input), the model trains
    behind it, so every hook sees the model a user is served; the returned model has the layer
    folded into its first Linear (`defcon.engine.models.fold_input_layer`): same function, same
    architecture. With `patience` (plain training only), it stops once validation accuracy has
    not improved for that many epochs and keeps the best epoch's weights
    (`training.best_epoch` in the record): how `defcon.engine.settings` fits epochs to a user's data.
    """
    if patience is not None and defenses:
        raise DefconError("early stopping applies to the undefended model only")
    clashes = structural_clashes([defense.spec for defense in defenses])
    if clashes:
        raise DefconError(f"structural clash: {clashes[0].sentence()}")
    profile = env.profile
    arch = arch or env.arch or arch_for(env.dataset, width=profile.width)
    for defense in defenses:
        arch = defense_call(defense, "adapt_arch", arch, returns=ArchConfig)
    torch.manual_seed(env.seed)
    model = build_model(arch, env.seed)
    if input_layer is not None:
        model = WithInputLayer(input_layer, model)
    model = place(model, env.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=profile.lr)
    run = TrainingRun(
        model=model,
        optimizer=optimizer,
        loader=train_split.loader(profile.batch_size, shuffle=True, seed=env.seed),
        env=env,
        train=train_split,
        epochs=epochs if epochs is not None else profile.epochs_for(env.dataset.name),
        lr=profile.lr,
        batch_size=profile.batch_size,
    )
    for defense in _users(defenses, Slot.PRIVACY_WRAPPER):
        defense_call(defense, "wrap", run)
    transforms = _users(defenses, Slot.BATCH_TRANSFORM)
    loss_terms = _users(defenses, Slot.LOSS_TERM)
    noise_steps = _users(defenses, Slot.PARAMETER_NOISE)
    loss = torch.zeros(())
    val_accuracy: list[float] = []
    best = ((-1.0, 0.0), 0, None)  # early stopping: ((val accuracy, -val loss), epoch, weights)
    bar = tqdm(range(run.epochs), desc=printable(description), disable=not _show_progress(),
               leave=False)  # fmt: skip
    for epoch in bar:
        run.epoch = epoch
        run.model.train()
        for x, y, s in run.loader:
            if len(y) == 0:  # Poisson sampling (DP-SGD) can draw an empty batch
                continue
            for defense in transforms:
                with run.hooks_disabled():
                    x, y, s = _batch(defense, run, x, y, s)
            run.optimizer.zero_grad(set_to_none=True)
            logits = run.model(x)
            loss = F.cross_entropy(logits, y)
            for defense in loss_terms:
                loss = loss + defense_call(
                    defense, "loss_term", run, x, y, s, logits, returns=torch.Tensor
                )
            loss.backward()
            for defense in noise_steps:
                defense_call(defense, "noisy_step", run)
            run.optimizer.step()
        bar.set_postfix(loss=float(loss.detach()))
        if patience is not None:
            current = _val_scores(run)  # accuracy first; the loss breaks a small set's ties
            if current > best[0]:
                best = (current, epoch + 1, copy.deepcopy(run.model.state_dict()))
            elif epoch + 1 - best[1] >= patience:
                break
        elif epoch >= run.epochs - CONVERGENCE_WINDOW:  # convergence check (see below)
            val_accuracy.append(_val_accuracy(run))
    if best[2] is not None:
        run.model.load_state_dict(best[2])
        run.record["training.best_epoch"] = float(best[1])
        run.record["training.epochs_run"] = float(run.epoch + 1)
        run.record["training.best_val_accuracy"] = best[0][0]
    for defense in _users(defenses, Slot.PRIVACY_WRAPPER):
        defense_call(defense, "unwrap", run)
    run.model = run.plain_model
    for defense in _users(defenses, Slot.FINETUNE_PHASE):
        defense_call(defense, "finetune", run)
    run.model.eval()
    if isinstance(run.model, WithInputLayer):
        run.model = place(fold_input_layer(run.model, train_split.x[:256]), env.device)
    if nonfinite_logits(run.model, train_split.x[:1024]):
        with_defenses = f" with {', '.join(d.name for d in defenses)}" if defenses else ""
        raise DefconError(
            f"the model ({model_label(arch)}) trained{with_defenses} gives non-finite logits (NaN "
            "or inf) on its training rows, so it predicts nothing; check the model's forward "
            "pass (and the learning rate) and that the data is finite"
        )
    record = dict(run.record)
    if val_accuracy:
        record["training.val_accuracy"] = val_accuracy[-1]
        # Still learning when the last epoch beats every epoch of the window before it: an
        # overfit model's validation accuracy swings from epoch to epoch, and a swing back up
        # after a dip is not a model that has not converged.
        record["training.last_epoch_val_gain"] = (
            val_accuracy[-1] - max(val_accuracy[:-1]) if len(val_accuracy) > 1 else 0.0
        )
        # The largest fall between consecutive epochs of the window: how far validation accuracy
        # swings by itself. A steadily learning model never falls, so its swing is 0.
        falls = [a - b for a, b in zip(val_accuracy[:-2], val_accuracy[1:-1], strict=True)]
        record["training.val_swing"] = max([0.0, *falls])
    return TrainedModel(model=run.model, arch=arch, record=record)


def _batch(
    defense: InTrainingDefense, run: TrainingRun, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch_transform hook's result, checked: three tensors with one row each per input."""
    batch = defense_call(defense, "transform_batch", run, x, y, s)
    if (
        not isinstance(batch, tuple)
        or len(batch) != 3
        or not all(isinstance(part, torch.Tensor) for part in batch)
        or len({len(part) for part in batch}) != 1
    ):
        got = type(batch).__name__ if not isinstance(batch, tuple) else f"a {len(batch)}-tuple"
        raise UserCodeError(
            f"defense '{defense.name}': transform_batch returned {got}, expected a tuple of three "
            "tensors (x, y, s) with the same number of rows"
        )
    return batch


def _val_scores(run: TrainingRun) -> tuple[float, float]:
    """(validation accuracy, minus validation loss) of the model being trained: higher is
    better on both, compared in this order (hooks off, mode restored)."""
    with run.hooks_disabled() as model, torch.no_grad():
        val = run.env.dataset.val
        value = accuracy(model, val.x, val.y)
        model.eval()
        loss = F.cross_entropy(model(val.x.to(run.env.device)), val.y.to(run.env.device))
    return value, -float(loss)


def _val_accuracy(run: TrainingRun) -> float:
    """Clean validation accuracy of the model being trained (hooks off, mode restored)."""
    with run.hooks_disabled() as model:
        val = run.env.dataset.val
        value = accuracy(model, val.x, val.y)
    return value


def supply_reference_models(env: Environment) -> Environment:
    """Let `env` train its reference models on first use, each once (the composer supplies
    cached ones instead; this is for an environment built by hand, as in tests and scripts)."""
    trained: dict[int | None, nn.Module] = {}

    def model(index: int | None) -> nn.Module:
        if index not in trained:
            trained[index] = train_reference(env, index).model
        return trained[index]

    env.reference_model = lambda: model(None)
    env.population_model = model
    return env


def train_reference(env: Environment, index: int | None = None) -> TrainedModel:
    """An independent model: the threat model's fixed architecture (the dataset's default, with
    BatchNorm, whatever the victim uses) trained by the plain recipe on `env.attacker_data`.

    It takes as many optimizer steps as the victim's plain training would (at most 40 epochs),
    so its per-example losses calibrate what a model of this recipe finds hard. With `index`,
    RMIA's i-th population model: the same recipe on a seeded half of `attacker_data`.
    """
    profile = env.profile
    data = env.attacker_data
    salt = "reference-model"
    if index is not None:
        salt = f"population-model:{index}"
        order = np.random.default_rng(derived_seed(env.seed, salt)).permutation(len(data))
        data = data.subset(np.sort(order[: max(1, len(data) // 2)]))
    arch = arch_for(env.dataset, width=profile.width)
    victim_steps = profile.epochs_for(env.dataset.name) * -(
        -len(env.dataset.train) // profile.batch_size
    )
    per_epoch = max(1, -(-len(data) // profile.batch_size))
    epochs = max(1, min(40, -(-victim_steps // per_epoch)))
    reference_env = Environment(
        dataset=env.dataset, seed=derived_seed(env.seed, salt), profile=profile,
        arch=arch, device=env.device,
    )  # fmt: skip
    return train(reference_env, data, arch=arch, epochs=epochs, description="reference")
