"""The membership metrics every defense against membership inference reports, from one attack.

Offline RMIA (Zarifzadeh, Liu, Shokri, ICML 2024; `defcon.engine.rmia`, the audit's attack too) on the
model *as served*, with the profile's reference models trained on halves of the attacker's
population data. Members are `env.members` (clean original records once each), non-members the
test split, equally many of each (seeded per defense, at most `samples`); the 0.1 % and 1 % FPR
thresholds come from `env.calibration_data`, which neither the target nor any reference saw.
Sharing this code keeps the defenses' numbers comparable: a combination of two of them judges
both by the same attack.
"""

from __future__ import annotations

import torch
from torch import nn

from defcon.engine.data import Split
from defcon.engine.defense import Environment
from defcon.engine.rmia import MembershipReading, rmia_attack
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError

# What `membership_metrics` returns (a defense reporting exactly these declares them in its spec).
MEMBERSHIP_METRIC_NAMES = (
    "mia_auc",
    "mia_tpr_at_1_fpr",
    "mia_tpr_at_0_1_fpr",
    "mia_calibration_fpr",
)


def balanced(
    inside: Split, outside: Split, cap: int, generator: torch.Generator
) -> tuple[Split, Split]:
    """Equally many members and non-members (at most `cap` each), seeded random subsets."""
    size = min(len(inside), len(outside), cap)
    pick_in = torch.randperm(len(inside), generator=generator)[:size]
    pick_out = torch.randperm(len(outside), generator=generator)[:size]
    return inside.subset(pick_in), outside.subset(pick_out)


def membership_sets(env: Environment, owner: str, samples: int) -> tuple[Split, Split]:
    """The seeded, balanced members and non-members `owner` (a defense's name) scores."""
    members = env.members
    if len(members) < 4:
        raise DefconError(f"{owner}: too few clean training records to measure membership")
    generator = torch.Generator().manual_seed(derived_seed(env.seed, f"{owner}:mia"))
    return balanced(members, env.dataset.test, samples, generator)


def membership_reading(
    model: nn.Module, env: Environment, owner: str, samples: int
) -> MembershipReading:
    """Offline RMIA on what `model` serves; the reading keeps the ROC points for a plot."""
    inside, outside = membership_sets(env, owner, samples)
    return rmia_attack(
        model, env.population_models(), inside, outside, env.attacker_data,
        env.calibration_data,
    )  # fmt: skip


def membership_metrics(
    model: nn.Module, env: Environment, owner: str, samples: int
) -> dict[str, float]:
    """AUC and TPR at 0.1 % / 1 % FPR of offline RMIA, and the realised calibration FPR."""
    reading = membership_reading(model, env, owner, samples)
    return {
        "mia_auc": reading.auc,
        "mia_tpr_at_1_fpr": reading.tpr_at_1_fpr,
        "mia_tpr_at_0_1_fpr": reading.tpr_at_0_1_fpr,
        "mia_calibration_fpr": reading.calibration_fpr,
    }
