"""Whether a verdict can be trusted at all: an underfit undefended model makes it unreliable.

Every metric of a composition is read against the undefended model; one that has not converged,
or that barely beats always predicting the majority class, makes any drop or hold meaningless.
Such a verdict is labelled `unreliable` before its table, carries the reasons in its record, and
is never scored by the benchmark (`CompositionRecord.conclusive` is False).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from defcon.engine.training import CONVERGED_GAIN

CLEAR_MARGIN = 0.02  # clean accuracy within this of the majority-class rate: not clearly better


def underfit_reasons(
    facts: Sequence[Mapping[str, float]],
    clean: Sequence[float],
    majority: float,
    val_rows: int | None = None,
    early_stopping: Mapping[str, float] | None = None,
) -> tuple[str, ...]:
    """Why the undefended model is underfit (empty: it is not), from its training facts per
    seed and its clean test accuracy per seed against the majority-class rate. On a small
    validation split (`val_rows`) a gain of one row is noise, not a model still learning; nor is
    a gain no larger than the model's own largest fall between epochs (an overfit model's
    validation accuracy swings up and down; a steadily learning one never falls).

    Where early stopping chose the epochs (`early_stopping`: the record's facts of
    `defcon.engine.fitting`), the chosen epoch is by construction one whose epoch still gained, so
    convergence is read from the stopping itself: patience ran out before the cap, or not."""
    reasons: list[str] = []
    floor = max(CONVERGED_GAIN, 1.5 / val_rows) if val_rows else CONVERGED_GAIN
    # (gain, threshold) per seed: a gain within the model's own epoch-to-epoch swing is noise
    gains = [
        (f["training.last_epoch_val_gain"], max(floor, f.get("training.val_swing", 0.0)))
        for f in facts
        if "training.last_epoch_val_gain" in f
    ]
    if early_stopping and "early_stopping.epochs_run" in early_stopping:
        run, cap = early_stopping["early_stopping.epochs_run"], early_stopping["early_stopping.cap"]
        if run >= cap:
            reasons.append(
                f"the undefended model is not converged: early stopping reached its cap of "
                f"{cap:.0f} epochs while validation accuracy was still improving; raise --epochs"
            )
    elif still := [(gain, limit) for gain, limit in gains if gain > limit]:
        gain, limit = max(still)
        reasons.append(
            f"the undefended model is not converged (its last epoch beat the best of the epochs "
            f"before it by {gain:.3f} validation accuracy on some seed, > {limit:.3f}, the larger "
            "of the noise floor and its own epoch-to-epoch swing); train longer (--epochs)"
        )
    if clean and min(clean) <= majority + CLEAR_MARGIN:
        reasons.append(
            f"the undefended model is not clearly better than predicting the majority class "
            f"(clean accuracy {min(clean):.3f} on some seed vs {majority:.3f} + {CLEAR_MARGIN})"
        )
    return tuple(reasons)
