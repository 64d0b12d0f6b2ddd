"""The membership auditor's canaries: a one-run audit of ε beside the accountant's claim.

Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023: m
canaries are each included in training with probability 1/2, independently; after training the
auditor scores every canary, guesses "in" for the highest scores and "out" for the lowest, and
the share of right guesses bounds ε from below (`defcon.engine.dp_audit`). Canaries here are training
records with a seeded wrong label (mislabeled records are the strongest black-box canaries:
Jagielski, Ullman, Oprea, NeurIPS 2020), drawn from the dataset's reserve (training records the
profile's cap left out) and *added* to the training split, so the owner's training records stay
as they are and the audit costs the task only the included canaries' label noise. Without a
large enough reserve (a user's uncapped data) they replace training records instead, at most
`MAX_SHARE` of them. Either way the excluded half never reaches training, so an excluded canary
is a record the model never saw.

Planted in every arm of a run that measures membership (no defense, alone and combined), the
same way the BadNets poisoner is: one threat scenario for every arm. A planted canary is not an
unchanged record, so it is never counted as a member by the membership attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from defcon.engine.data import Split
from defcon.engine.dp_audit import audit_from_scores
from defcon.engine.rmia import true_class_prob
from defcon.engine.seeds import derived_seed

MAX_SHARE = 0.2  # at most this share of the training split is taken for canaries


@dataclass(frozen=True)
class Canaries:
    """Every canary with its planted label, and which ones training included."""

    split: Split
    included: np.ndarray  # bool, one per canary

    def __len__(self) -> int:
        return len(self.split)


def plant_canaries(
    train: Split, count: int, num_classes: int, seed: int, reserve: Split | None = None
) -> tuple[Split, Canaries]:
    """The training split with `count` canaries planted, each kept with probability 1/2, and
    the canaries for the audit. Canaries come from `reserve` and are added when it holds
    `count` records; otherwise training records are relabelled and the excluded ones removed."""
    rng = np.random.default_rng(derived_seed(seed, "membership-audit:canaries"))
    from_reserve = reserve is not None and len(reserve) >= count
    source = reserve if from_reserve and reserve is not None else train
    if not from_reserve:
        count = min(count, int(len(train) * MAX_SHARE))
    picked = np.sort(rng.choice(len(source), size=count, replace=False))
    shift = torch.as_tensor(rng.integers(1, num_classes, size=count), dtype=train.y.dtype)
    chosen = source.subset(picked)
    canaries = chosen.with_(
        y=(chosen.y + shift) % num_classes,
        origin=torch.full((count,), -1, dtype=torch.long),  # no owner's record: its own person
    )
    included = rng.random(count) < 0.5
    kept = canaries.subset(np.flatnonzero(included))
    if from_reserve:
        return train.concat(kept), Canaries(canaries, included)
    keep = np.ones(len(train), dtype=bool)
    keep[picked] = False
    return train.subset(np.flatnonzero(keep)).concat(kept), Canaries(canaries, included)


def audited_epsilon(
    model: nn.Module, canaries: Canaries | None, delta: float, beta: float = 0.05
) -> float:
    """The one-run audit's lower bound on ε at confidence 1 − β (NaN when no canaries were
    planted: not audited). Score: the served model's log-probability of the planted label;
    guesses: the top and bottom quarter of the canaries, a fixed share chosen before any run
    (taking the best of several shares would need a multiple-testing correction)."""
    if canaries is None or len(canaries) < 4:
        return math.nan
    chosen = true_class_prob(model, canaries.split)  # the planted label is the split's label
    scores = np.log(np.clip(chosen, 1e-12, None))
    return audit_from_scores(scores, canaries.included, guesses=len(canaries) // 2, delta=delta)
