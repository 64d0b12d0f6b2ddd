"""Run profiles: how much data, how many epochs and attack steps a run uses.

A dataset's own sizes under each profile are declared in its registry entry
(`defcon.planning.dataset_info`); a profile holds its budgets and the defaults for any other dataset.

`quick` is sized for 2 CPU cores (minutes per combination); `paper` is sized for a GPU machine
(full data, more epochs, 40-step attacks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from defcon.errors import unknown
from defcon.planning.dataset_info import DatasetEntry, builtin_datasets, plugged_datasets


class MembershipRegime(BaseModel):
    """Training set size and epochs of a dataset's models whenever membership is measured."""

    model_config = ConfigDict(frozen=True)

    max_train: int = Field(ge=10, description="training records (fewer records leak more)")
    epochs: int = Field(ge=1, description="epochs (trained longer, as in the MIA literature)")
    canaries: int = Field(
        default=0,
        ge=0,
        description="mislabeled training records planted for the one-run ε audit "
        "(defcon.engine.canaries; 0: no audit)",
    )


class Profile(BaseModel):
    """Sizes and budgets of one run; part of every cache key."""

    model_config = ConfigDict(frozen=True)

    name: str
    max_train: dict[str, int | None] = Field(default_factory=dict)
    max_eval: dict[str, int | None] = Field(default_factory=dict)
    epochs: dict[str, int] = Field(default_factory=dict)
    batch_size: int = 128
    lr: float = 1e-3
    width: int = 16
    attack_steps: int = 7
    eval_attack_steps: int = 10
    finetune_epochs: int = 3
    mia_references: int = Field(
        default=4, ge=1, description="RMIA reference models, each on half the attacker's data"
    )
    autoattack_steps: int = Field(
        default=100, ge=1, description="APGD-CE and APGD-T iterations (AutoAttack's standard: 100)"
    )
    canaries: int = Field(
        default=0, ge=0, description="set by a membership regime: canaries planted in every arm"
    )
    membership: dict[str, MembershipRegime] = Field(
        default_factory=dict,
        description="per dataset: the regime of every arm of a run that measures membership "
        "(a defense with a membership metric, the audit's membership risk)",
    )

    def train_cap(self, dataset: str) -> int | None:
        """The cap for a dataset, or the profile's "default" (a user's own dataset)."""
        return self.max_train.get(dataset, self.max_train.get("default"))

    def eval_cap(self, dataset: str) -> int | None:
        return self.max_eval.get(dataset, self.max_eval.get("default"))

    def epochs_for(self, dataset: str) -> int:
        return self.epochs.get(dataset, self.epochs.get("default", 5))

    def membership_regime(self, dataset: str) -> Profile:
        """This profile with `dataset`'s membership regime applied (itself when none is
        declared): an undefended model must leak measurably for a membership defense to have
        anything to remove, and the literature's leaky regime is fewer records trained longer."""
        regime = self.membership.get(dataset)
        if regime is None:
            return self
        return self.model_copy(
            update={
                "max_train": {**self.max_train, dataset: regime.max_train},
                "epochs": {**self.epochs, dataset: regime.epochs},
                "canaries": regime.canaries,
            }
        )


def _sized(profile: str, field: str, entries: Iterable[DatasetEntry] | None = None,
           **default: int | None) -> dict[str, Any]:  # fmt: skip
    """One size of a profile per dataset, as each dataset's registry entry declares it (only
    those that declare it), then the profile's own `default` for the others."""
    chosen = builtin_datasets().values() if entries is None else entries
    declared = {
        entry.name: getattr(entry.sizes[profile], field)
        for entry in chosen
        if profile in entry.sizes and field in entry.sizes[profile].model_fields_set
    }
    return {**declared, **default}


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        max_train=_sized("tiny", "max_train", default=2000),
        max_eval=_sized("tiny", "max_eval", default=1000),
        epochs=_sized("tiny", "epochs", default=4),
        batch_size=64,
        lr=3e-3,
        width=8,
        attack_steps=3,
        eval_attack_steps=5,
        finetune_epochs=3,
        mia_references=2,
        autoattack_steps=10,
    ),
    "quick": Profile(
        # Sized so the undefended models are not underfit (fmnist ≈ 0.88, adult ≈ 0.85 clean
        # test accuracy; each training records a convergence check) yet a benchmark of every
        # pair fits 2 CPU cores. Adult's full test split keeps group-rate estimates steady.
        name="quick",
        max_train=_sized("quick", "max_train"),
        max_eval=_sized("quick", "max_eval"),
        epochs=_sized("quick", "epochs", default=4),
        batch_size=128,
        lr=2e-3,
        width=16,
        attack_steps=2,
        eval_attack_steps=10,
        finetune_epochs=3,
        autoattack_steps=25,
        membership={
            "fmnist": MembershipRegime(max_train=2000, epochs=30, canaries=200),
            "adult": MembershipRegime(max_train=2000, epochs=40, canaries=100),
        },
    ),
    "paper": Profile(
        name="paper",
        max_train=_sized("paper", "max_train"),
        max_eval=_sized("paper", "max_eval"),
        epochs=_sized("paper", "epochs", default=20),
        batch_size=256,
        lr=1e-3,
        width=32,
        attack_steps=10,
        eval_attack_steps=40,
        finetune_epochs=5,
    ),
}


def get_profile(name: str) -> Profile:
    """The profile `name`, sized for the installed packages' datasets too (`defcon.datasets`)."""
    if name not in PROFILES:
        raise unknown("profile", name, PROFILES)
    profile = PROFILES[name]
    plugged = plugged_datasets().values()
    if not plugged:
        return profile
    return profile.model_copy(
        update={
            field: {**_sized(name, field, plugged), **getattr(profile, field)}
            for field in ("max_train", "max_eval", "epochs")
        }
    )
