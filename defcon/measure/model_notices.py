"""Notices that need the runner or trained models: the architecture a defense swaps in, and
whether each defense acted (the share of test predictions it changes). The vocabulary is in
`defcon.planning.notices`; these readings sit above the pipelines they read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from defcon.engine.data import UserData
from defcon.engine.defense import InTrainingDefense
from defcon.engine.devices import device_of
from defcon.engine.fingerprint import code_of
from defcon.engine.models import build_model, predict
from defcon.measure.arms import COMBINED, Arm, ArmComparison
from defcon.measure.pipelines import NO_DEFENSE, PipelineResult, PipelineRunner
from defcon.planning.notices import ACTED, CHANGED, CHANGED_VS_COMBINED, Notice, Notices


def data_and_model_notices(runner: PipelineRunner, order: Sequence[str], seed: int) -> Notices:
    """What reading the user's data changed (rows, labels, groups) and what the defenses of
    `order` change in the model's layers."""

    source = runner.source.notices if isinstance(runner.source, UserData) else ()
    return (*source, *architecture_notices(runner, order, seed))


# --------------------------------------------------------------------------- the model


def architecture_notices(runner: PipelineRunner, order: Sequence[str], seed: int) -> Notices:
    """One notice per in-training defense whose `adapt_arch` changes the victim's layers (the
    layer types built before and after differ), naming what was replaced by what."""

    dataset = runner.dataset(seed)
    base = runner.arch(dataset)
    notices = []
    for name in order:
        defense = runner.defense(name)
        if not isinstance(defense, InTrainingDefense):
            continue
        adapted = defense.adapt_arch(base)
        if adapted == base:
            continue
        before = Counter(type(m).__name__ for m in build_model(base, seed).modules())
        after = Counter(type(m).__name__ for m in build_model(adapted, seed).modules())
        removed, added = before - after, after - before
        if not removed and not added:
            continue
        said = {"replaced": _layers(removed), "by": _layers(added)}
        notices.append(
            Notice(
                kind="architecture",
                subject=name,
                text=f"{name}: the model's {said['replaced'] or 'layers'} replaced by "
                f"{said['by'] or 'nothing'} in every model that applies {name} (its "
                "architecture requirement); the undefended model keeps them",
                values={f"-{k}": float(v) for k, v in removed.items()}
                | {f"+{k}": float(v) for k, v in added.items()},
                labels=said,
            )  # fmt: skip
        )
    return tuple(notices)


def _layers(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


# --------------------------------------------------------------------------- did it act


class ChangedPredictions:
    """A reading of every arm: the share of test predictions its served model changes against
    the undefended model of the same seed (and, for a defense alone in a combination, against
    the combined model). The no-defense and combined arms are read before the alone arms
    (`ArmComparison.add_seed`), so their results are at hand; cached with the arm's model."""

    def __init__(self, runner: PipelineRunner) -> None:
        self.runner = runner
        self.seen: dict[str, PipelineResult] = {}

    def __call__(self, arm: Arm, result: PipelineResult) -> dict[str, float]:

        if arm.label == NO_DEFENSE:
            self.seen = {NO_DEFENSE: result}
            return {}
        if arm.label == COMBINED:
            self.seen[COMBINED] = result
        read = self._changed(result, self.seen[NO_DEFENSE], CHANGED)
        if arm.label != COMBINED and COMBINED in self.seen:
            read |= self._changed(result, self.seen[COMBINED], CHANGED_VS_COMBINED)
        return read

    def _changed(self, result: PipelineResult, other: PipelineResult, key: str) -> dict[str, float]:
        """The share changed against `other` and, against the undefended model, the facts the
        defenses logged as 'NAME.acted.WHAT' while training or applying (e.g. a loss share)."""

        def compute() -> dict[str, float]:
            share = {key: changed_share(result, other)}  # builds the model: fills env.record
            if key != CHANGED:
                return share
            return share | {k: v for k, v in result.env.record.items() if ".acted." in k}

        what = {
            ACTED: {"model": other.model_key, "post": list(other.post_keys)},
            "code": code_of(ChangedPredictions),
        }
        return self.runner.measurement(result, what, compute, "predictions changed")


def changed_share(result: PipelineResult, other: PipelineResult) -> float:
    """The share of the test rows on which the two served models predict different classes."""
    test = result.env.dataset.test  # predict runs without gradients
    mine = predict(result.model, test.x.to(device_of(result.model))).cpu()
    theirs = predict(other.model, test.x.to(device_of(other.model))).cpu()
    return float((mine != theirs).float().mean()) if len(mine) else float("nan")


def acted_notices(arms: ArmComparison, order: Sequence[str]) -> Notices:
    """Per defense, how much it changed the model's answers: alone vs the undefended model and,
    in a pair, the combination vs the other defense alone (what adding it changed there). A
    share of 0 says the defense did not change a single test prediction."""
    notices = []
    for name in order:
        alone = _mean(arms.series(name, ACTED), CHANGED)
        if alone is None:
            continue
        values = {"vs_undefended": alone}
        text = f"{name} alone changes {alone:.1%} of the undefended model's test predictions"
        others = [other for other in order if other != name]
        if len(others) == 1:
            (other,) = others
            added = _mean(arms.series(other, ACTED), CHANGED_VS_COMBINED)
            if added is not None:
                values[f"added_to_{other}"] = added
                text += f"; added to {other}, {added:.1%} of {other} alone's"
        for arm, where in ((name, "alone"), (COMBINED_ARM, "combined")):
            for fact, mean in _facts(arms.series(arm, ACTED), name).items():
                values[f"{fact}_{where}"] = mean
                words = _FACT_WORDS.get(fact, fact.replace("_", " ") + " {:.3g}")
                text += f"; {words.format(mean)} ({where})"
        seeds = len(arms.series(name, ACTED))
        text += f" (mean over {seeds} seed{'s' if seeds != 1 else ''})"
        if alone == 0:
            text += "; alone it changed not one test prediction: it may not have acted"
        if any(v == 0 for k, v in values.items() if k.startswith("added_to_")):
            text += f"; added to {others[0]} it changed not one: it may not have acted there"
        notices.append(Notice(kind="defense_acted", subject=name, text=text, values=values))
    return tuple(notices)


COMBINED_ARM = "combined"  # defcon.measure.arms.COMBINED (not imported here: arms imports torch)
_FACT_WORDS = {  # how a defense's 'NAME.acted.WHAT' fact reads in its notice
    "loss_share": "its term was {:.1%} of the training loss",
    "pruned_units": "{:g} units pruned",
}


def _facts(readings: Sequence[Mapping[str, float]], name: str) -> dict[str, float]:
    """The mean over seeds of each 'NAME.acted.WHAT' fact of defense `name`."""
    prefix = f"{name}.acted."
    keys = sorted({k for r in readings for k in r if k.startswith(prefix)})
    return {k[len(prefix) :]: _mean(readings, k) or 0.0 for k in keys}


def _mean(readings: Sequence[Mapping[str, float]], key: str) -> float | None:
    values = [r[key] for r in readings if key in r]
    return sum(values) / len(values) if values else None
