"""Epochs fitted to a user's data: early stopping on validation accuracy, decided once.

A profile's fixed epoch count suits the built-in datasets it was sized on; a user's data may
need many more (or fewer). The undefended model of the first seed trains until validation
accuracy has not improved for `patience` epochs (at most `cap`); its best epoch becomes the
epoch count of every arm, so all arms (DP-SGD's noise calibration included) share one budget
and the cache keys follow it.
"""

from __future__ import annotations

from typing import Any

from defcon.engine.defense import Environment
from defcon.engine.training import train

PATIENCE = 10
CAP = 200


def fit_epochs(composer: Any, seed: int = 0, cap: int = CAP, patience: int = PATIENCE) -> int:
    """Train the undefended model with early stopping and make its best epoch the composer's
    epoch count; the facts go into `composer.fitted` (and so into the record)."""
    runner = composer.runner
    dataset = runner.dataset(seed)
    arch = runner.arch(dataset)
    env = Environment(
        dataset=dataset, seed=seed, profile=runner.profile, arch=arch, device=runner.device
    )
    trained = train(
        env, dataset.train, arch=arch, epochs=cap, patience=patience, description="early stopping"
    )
    best = int(trained.record["training.best_epoch"])
    epochs = {**runner.profile.epochs, "default": best, runner.dataset_name: best}
    runner.profile = runner.profile.model_copy(update={"epochs": epochs})
    composer.fitted = {
        "early_stopping.patience": float(patience),
        "early_stopping.cap": float(cap),
        "early_stopping.best_epoch": float(best),
        "early_stopping.epochs_run": trained.record["training.epochs_run"],
        "early_stopping.val_accuracy": trained.record.get("training.best_val_accuracy", 0.0),
    }
    composer.log(f"early stopping: best validation accuracy at epoch {best} (patience {patience})")
    return best
