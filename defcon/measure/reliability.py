"""Whether a verdict can be trusted at all: an underfit undefended model makes it unreliable.

Every metric of a composition is read against the undefended model; one that has not converged,
or that barely beats always predicting the majority class, makes any drop or hold meaningless.
Such a verdict is labelled `unreliable` before its table, carries the reasons in its record, and
is never scored by the benchmark (`CompositionRecord.conclusive` is False).

The check is about the training recipe, read over the seeds as the verdict itself is (a mean),
not about any one seed: a per-seed "on some seed" check raises false alarms more often the more
seeds a verdict has, and the benchmark adds seeds precisely to the verdicts that are close, so it
would discard those selectively. A single degenerate model is still named, per seed, by the
composer's warnings (`degenerate_models`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import fmean

from defcon.engine.training import CONVERGED_GAIN

CLEAR_MARGIN = 0.02  # clean accuracy within this of the majority-class rate: not clearly better


def underfit_reasons(
    facts: Sequence[Mapping[str, float]],
    clean: Sequence[float],
    majority: float,
    val_rows: int | None = None,
    early_stopping: Mapping[str, float] | None = None,
) -> tuple[str, ...]:
    """Why the undefended recipe is underfit (empty: it is not), from its training facts per
    seed and its clean test accuracy per seed against the majority-class rate, each read as a
    mean over the seeds. On a small validation split (`val_rows`) a gain of one row is noise, not
    a model still learning; nor is a gain no larger than the model's own largest fall between
    epochs (an overfit model's validation accuracy swings up and down; a steadily learning one
    never falls). The recipe is still learning when its seeds' mean last-epoch gain exceeds the
    mean of those per-seed thresholds.

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
    elif gains and (gain := fmean([g for g, _ in gains])) > (limit := fmean([t for _, t in gains])):
        reasons.append(
            f"the undefended model is not converged (its last epoch beat the best of the epochs "
            f"before it by {gain:.3f} validation accuracy, mean over {len(gains)} seed(s), > "
            f"{limit:.3f}, the mean of the larger of the noise floor and each seed's own "
            "epoch-to-epoch swing); train longer (--epochs)"
        )
    if clean and (accuracy := fmean(clean)) <= majority + CLEAR_MARGIN:
        reasons.append(
            f"the undefended model is not clearly better than predicting the majority class "
            f"(clean accuracy {accuracy:.3f}, mean over {len(clean)} seed(s), vs {majority:.3f} "
            f"+ {CLEAR_MARGIN})"
        )
    return tuple(reasons)
