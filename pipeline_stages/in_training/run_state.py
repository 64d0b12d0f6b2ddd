"""State an in-training defense keeps for one training run (multipliers, an adversary, the
share of the loss its term has been).

One defense instance may train several models, one after the other or interleaved (the
composer's arms); each run must start from fresh state, as a new instance would. Runs are told
apart by identity, with a weak reference so that a reused id of a finished run is not mistaken
for it and finished runs' state is dropped.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from defcon.training import TrainingRun

State = TypeVar("State")


class PerRun(Generic[State]):
    """A state per live training run, made by `fresh` on the run's first use."""

    def __init__(self) -> None:
        self._states: dict[int, tuple[weakref.ref, State]] = {}

    def get(self, run: object, fresh: Callable[[], State]) -> State:
        entry = self._states.get(id(run))
        if entry is None or entry[0]() is not run:  # a new run (ids can be reused)
            self._states = {k: v for k, v in self._states.items() if v[0]() is not None}
            entry = self._states[id(run)] = (weakref.ref(run), fresh())
        return entry[1]

    def __getstate__(self) -> dict[str, object]:
        """Pickled (a worker process) without the states: weak references do not pickle, and a
        copy of the defense starts its runs afresh."""
        return {"_states": {}}


@dataclass
class LossShare:
    """A loss term's size beside the plain cross-entropy over a run's batches: 0 in the run's
    record ('NAME.acted.loss_share', `defcon.model_notices`) says it never changed a gradient."""

    term: float = 0.0
    loss: float = 0.0

    def add(
        self, run: TrainingRun, name: str, term: float, logits: torch.Tensor, y: torch.Tensor
    ) -> None:
        """Count one batch's term (its size) and cross-entropy; record the share so far."""
        self.term += term
        with torch.no_grad():
            self.loss += float(F.cross_entropy(logits.detach(), y))
        total = self.term + self.loss
        run.record[f"{name}.acted.loss_share"] = self.term / total if total > 0 else 0.0
