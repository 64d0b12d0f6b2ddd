"""Each defense alone vs no defense: does the mechanism do its job? (the stage benchmarks' core)

For a defense and a dataset, over seeds: the no-defense model and the defended model are built
under the defense's own threat scenario (same cache as the composer, so the bench reuses them),
and the defense's metrics plus clean accuracy are measured on both.

For a defense whose spec mitigates evasion, on image data, both models also get the invariance
error in the same L∞ ball as its robust accuracy (`defcon.engine.invariance`, Tramèr et al., ICML
2020): robust accuracy alone rewards a model that keeps its label even where the true class
changed. The ball is the defense's own (`eps_for(env)`, where it measures in one) or else the
evasion risk's (`defcon.risks.evasion.EPS`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from defcon.effectiveness import CONFIDENCE, Summary, look_plan, read_at_looks
from defcon.engine.defense import Defense
from defcon.engine.fingerprint import invariance_code
from defcon.engine.invariance import (
    INVARIANCE_ERROR,
    LABEL_CHANGING,
    InvarianceSet,
    InvarianceSettings,
    invariance_error,
    invariance_set,
    not_applicable,
)
from defcon.measure.arms import Arm, ArmComparison, Reading, Role
from defcon.measure.composer import Composer
from defcon.measure.pipelines import NO_DEFENSE, PipelineResult
from defcon.planning.rules import Scenario
from defcon.risks.evasion import EPS as EVASION_EPS
from defcon.vocabulary import Direction, Risk


class StandaloneResult(BaseModel):
    """One defense on one dataset: its metrics and clean accuracy without and with it."""

    model_config = ConfigDict(frozen=True)

    defense: str
    dataset: str
    profile: str
    seeds: int
    metrics: dict[str, tuple[Summary, Summary]]  # metric → (no defense, defended)
    directions: dict[str, Direction]
    clean_accuracy: tuple[Summary, Summary]
    wall_time_s: float
    # Evasion defenses on images: invariance error (no defense, defended), NaN on a seed where
    # no label-changing perturbation was found; n per seed (the same perturbations for both).
    invariance: tuple[Summary, Summary] | None = None
    label_changing: tuple[int, ...] = ()
    invariance_eps: float | None = None
    invariance_note: str | None = None  # why an evasion defense has no invariance reported
    # Per side, of the look these seeds make, to judge them at (`effectiveness.look_plan`)
    confidence: float = CONFIDENCE


def _eps(defense: Defense, result: PipelineResult) -> float:
    """The L∞ radius the defense's robust accuracy is measured in (else the evasion risk's)."""
    own = getattr(defense, "eps_for", None)
    return float(own(result.env)) if callable(own) else EVASION_EPS[result.env.dataset.kind]


def _invariance(
    composer: Composer, result: PipelineResult, eps: float, found: dict[int, InvarianceSet]
) -> dict[str, float]:
    """The invariance error of a pipeline's model, cached like a defense's measurement."""
    settings = InvarianceSettings()
    what = {"eps": eps, "invariance": settings.model_dump(mode="json"), "code": invariance_code()}

    def compute() -> dict[str, float]:
        seed = result.env.seed
        if seed not in found:  # model-independent: built once per seed for both models
            found[seed] = invariance_set(result.env.dataset, eps, seed, settings)
        return invariance_error(result.model, found[seed])

    return composer.runner.measurement(result, what, compute, "measuring invariance")


def measure_standalone(
    composer: Composer,
    name: str,
    seeds: int,
    first_seed: int = 0,
    *,
    max_seeds: int | None = None,
    enough: Callable[[StandaloneResult], bool] | None = None,
) -> StandaloneResult:
    """Measure defense `name` alone vs no defense over seeds first_seed … first_seed + seeds − 1
    (a second seed set shows whether a reading reproduces); then, up to `max_seeds`, more seeds
    up to each next look (`defcon.effectiveness.looks`) until `enough` says the result so far
    suffices, as the composer adds seeds to an inconclusive verdict (each seed is measured once;
    without `enough`, none is added). The result's `confidence` is the per-look one to judge it at.

    The composer's arm loop (`defcon.measure.arms`) on a one-defense "combination", so no combined arm,
    under the defense's own scenario; invariance is one more reading on both arms.
    """
    started = time.perf_counter()
    spec = composer.catalog[name]
    evasion = Risk.EVASION in spec.mitigates
    note = not_applicable(composer.dataset(0)) if evasion else None
    found: dict[int, InvarianceSet] = {}
    radii: list[float] = []
    defense = composer.defense(name)  # its radius: config and data kind, the same on every arm

    def invariance(arm: Arm, result: PipelineResult) -> dict[str, float]:
        radii.append(_eps(defense, result))
        return _invariance(composer, result, radii[-1], found)

    readings = [Reading(INVARIANCE_ERROR, invariance)] if evasion and note is None else []
    arms = ArmComparison(composer, [name], poisoned=Scenario.of([spec]).poisoned, readings=readings)
    label_changing: list[int] = []

    def add_seed(seed: int) -> None:
        arms.add_seed(seed)
        if readings:
            (count,) = {  # the same perturbations for both models of a seed
                int(arms.series(arm, INVARIANCE_ERROR)[-1][LABEL_CHANGING])
                for arm in (NO_DEFENSE, name)
            }
            label_changing.append(count)

    def both(values: Callable[[str], list[float]]) -> tuple[Summary, Summary]:
        return Summary.of(values(NO_DEFENSE)), Summary.of(values(name))

    def errors(arm: str) -> list[float]:
        return [m[INVARIANCE_ERROR] for m in arms.series(arm, INVARIANCE_ERROR)]

    role: dict[str, Role] = {NO_DEFENSE: "none", name: "alone"}

    def result() -> StandaloneResult:
        return StandaloneResult(
            defense=name,
            dataset=composer.dataset_name,
            profile=composer.profile.name,
            seeds=len(arms.seeds),
            metrics={
                m.name: both(lambda arm, m=m: arms.values[(name, m.name, role[arm])])
                for m in spec.metrics
            },
            directions={m.name: m.direction for m in spec.metrics},
            clean_accuracy=both(lambda arm: arms.clean[arm]),
            wall_time_s=round(time.perf_counter() - started, 1),
            invariance=both(errors) if radii else None,
            label_changing=tuple(label_changing),
            invariance_eps=radii[-1] if radii else None,
            invariance_note=note,
            confidence=confidence[len(arms.seeds)],
        )

    # Without `enough` no seed is added: one look, at the nominal confidence.
    most = max(seeds, max_seeds or seeds) if enough else seeds
    confidence = look_plan(seeds, most)
    with composer.membership_regime(composer.measures_membership([name])):
        read_at_looks(
            add_seed, lambda count, _: enough is None or count >= most or enough(result()),
            seeds=seeds, max_seeds=most, seed_start=first_seed,
        )  # fmt: skip
    return result()


def invariance_cell(values: Summary, label_changing: Sequence[int]) -> str:
    """Mean ± std over seeds, the pooled count kept of those found, and n per seed.

    A seed with n = 0 has no value; with some of those, only the pooled count is shown (a mean
    over the remaining seed or two would look like more than it is).
    """
    n = ", ".join(str(c) for c in label_changing)
    pairs = [(v, c) for v, c in zip(values.raw(), label_changing, strict=True) if c > 0]
    if not pairs:
        return f"not measurable (n = {n})"
    kept = sum(round(v * c) for v, c in pairs)
    found = sum(c for _, c in pairs)
    if len(pairs) == len(label_changing):
        return f"{values} (kept {kept}/{found}; n = {n})"
    return (
        f"kept {kept}/{found} on {len(pairs)} of {len(label_changing)} seeds, not measurable "
        f"on the others (n = {n})"
    )


def standalone_markdown(results: Sequence[StandaloneResult], title: str) -> str:
    """A markdown table: metric and clean accuracy, no defense vs defense, mean ± std."""
    arrow = {Direction.HIGHER: "↑", Direction.LOWER: "↓"}
    lines = [
        f"# {title}",
        "",
        "| dataset | defense | metric | no defense | with defense | clean acc. no defense "
        "| clean acc. with defense | wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for index, (metric, (without, defended)) in enumerate(r.metrics.items()):
            first = index == 0
            lines.append(
                f"| {r.dataset} | {r.defense} | {metric} {arrow[r.directions[metric]]} | "
                f"{without} | {defended} | "
                + (
                    f"{r.clean_accuracy[0]} | {r.clean_accuracy[1]} | {r.wall_time_s:.0f} |"
                    if first
                    else "| | |"
                )
            )
        if r.invariance is not None:
            lines.append(
                f"| {r.dataset} | {r.defense} | {INVARIANCE_ERROR} ↓ (L∞ ε = {r.invariance_eps:g}) "
                f"| {invariance_cell(r.invariance[0], r.label_changing)} "
                f"| {invariance_cell(r.invariance[1], r.label_changing)} | | | |"
            )
        elif r.invariance_note is not None:
            lines.append(
                f"| {r.dataset} | {r.defense} | {INVARIANCE_ERROR} | not measured: "
                f"{r.invariance_note} | | | | |"
            )
    if any(r.invariance is not None for r in results):
        lines += ["", INVARIANCE_LEGEND]
    return "\n".join(lines)


INVARIANCE_LEGEND = (
    f"{INVARIANCE_ERROR} (Tramèr et al., ICML 2020; `defcon/engine/invariance.py`): per test input x of a "
    "seeded subset, x̃ = x + clip(x′ − x, −ε, ε) toward the other-class training example x′ the "
    "ε-ball gets closest to, in the same L∞ ball as robust accuracy. It is label-changing when a "
    "proxy oracle, not a human, says so: a 5-NN vote on the clean training split is a strict "
    "majority for x's label on x and for x′'s class on x̃ (x′ left out), and x̃ is closer to x′ "
    "than to x. The error is the share of those on which the model keeps its prediction (higher: "
    "more excessive invariance); n = how many were found per seed (the same perturbations for "
    "both models); with n = 0 it is not measurable."
)
