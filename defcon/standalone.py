"""Each defense alone vs no defense: does the mechanism do its job? (the stage benchmarks' core)

For a defense and a dataset, over seeds: the no-defense model and the defended model are built
under the defense's own threat scenario (same cache as the composer, so the bench reuses them),
and the defense's metrics plus clean accuracy are measured on both.

For a defense whose spec mitigates evasion, on image data, both models also get the invariance
error in the same L∞ ball as its robust accuracy (`defcon.invariance`, Tramèr et al., ICML
2020): robust accuracy alone rewards a model that keeps its label even where the true class
changed. The ball is the defense's own (`eps_for(env)`, where it measures in one) or else the
evasion risk's (`defcon.risks.evasion.EPS`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from defcon.composer import CLEAN_ACCURACY, Composer, PipelineResult
from defcon.defense import Defense
from defcon.effectiveness import Summary
from defcon.fingerprint import invariance_code
from defcon.invariance import (
    INVARIANCE_ERROR,
    LABEL_CHANGING,
    InvarianceSet,
    InvarianceSettings,
    invariance_error,
    invariance_set,
    not_applicable,
)
from defcon.risks.evasion import EPS as EVASION_EPS
from defcon.vocabulary import Direction, Risk, Threat


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


def _eps(defense: Defense, result: PipelineResult) -> float:
    """The L∞ radius the defense's robust accuracy is measured in (else the evasion risk's)."""
    own = getattr(defense, "eps_for", None)
    return float(own(result.env)) if callable(own) else EVASION_EPS[result.env.dataset.kind]


def _invariance(
    composer: Composer, result: PipelineResult, eps: float, found: dict[int, InvarianceSet]
) -> dict[str, float]:
    """The invariance error of a pipeline's model, cached like a defense's measurement."""
    settings = InvarianceSettings()
    description = {
        "model": result.model_key, "post": result.post_keys, "eps": eps,
        "invariance": settings.model_dump(mode="json"), "code": invariance_code(),
    }  # fmt: skip

    def compute() -> dict[str, float]:
        seed = result.env.seed
        if seed not in found:  # model-independent: built once per seed for both models
            found[seed] = invariance_set(result.env.dataset, eps, seed, settings)
        return invariance_error(result.model, found[seed])

    return composer.cache.measurement(description, compute, label="measuring invariance")


def measure_standalone(composer: Composer, name: str, seeds: int) -> StandaloneResult:
    """Measure defense `name` alone vs no defense over seeds 0 … seeds − 1."""
    started = time.perf_counter()
    spec = composer.catalog[name]
    poisoned = Threat.POISONER in spec.threats
    none_values: dict[str, list[float]] = {m.name: [] for m in spec.metrics}
    with_values: dict[str, list[float]] = {m.name: [] for m in spec.metrics}
    clean: tuple[list[float], list[float]] = ([], [])
    evasion = Risk.EVASION in spec.mitigates
    note = not_applicable(composer.dataset(0)) if evasion else None
    invariance: tuple[list[float], list[float]] = ([], [])
    label_changing: list[int] = []
    found: dict[int, InvarianceSet] = {}
    eps: float | None = None
    for seed in range(seeds):
        without = composer.run_pipeline(composer.pipeline([], seed, poisoned))
        pipeline = composer.pipeline([name], seed, poisoned)
        defended = composer.run_pipeline(pipeline)
        (defense,) = pipeline.defenses
        for target, result in ((none_values, without), (with_values, defended)):
            for metric, value in composer.measure(result, defense).items():
                target[metric].append(value)
        clean[0].append(composer.measure(without, None)[CLEAN_ACCURACY])
        clean[1].append(composer.measure(defended, None)[CLEAN_ACCURACY])
        if evasion and note is None:
            eps = _eps(defense, defended)
            counts: set[int] = set()
            for target, result in zip(invariance, (without, defended), strict=True):
                measured = _invariance(composer, result, eps, found)
                target.append(measured[INVARIANCE_ERROR])
                counts.add(int(measured[LABEL_CHANGING]))
            (count,) = counts  # the same perturbations for both models of a seed
            label_changing.append(count)
    return StandaloneResult(
        defense=name,
        dataset=composer.dataset_name,
        profile=composer.profile.name,
        seeds=seeds,
        metrics={
            m.name: (Summary.of(none_values[m.name]), Summary.of(with_values[m.name]))
            for m in spec.metrics
        },
        directions={m.name: m.direction for m in spec.metrics},
        clean_accuracy=(Summary.of(clean[0]), Summary.of(clean[1])),
        wall_time_s=round(time.perf_counter() - started, 1),
        invariance=None if eps is None else (Summary.of(invariance[0]), Summary.of(invariance[1])),
        label_changing=tuple(label_changing),
        invariance_eps=eps,
        invariance_note=note,
    )


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
    f"{INVARIANCE_ERROR} (Tramèr et al., ICML 2020; `defcon/invariance.py`): per test input x of a "
    "seeded subset, x̃ = x + clip(x′ − x, −ε, ε) toward the other-class training example x′ the "
    "ε-ball gets closest to, in the same L∞ ball as robust accuracy. It is label-changing when a "
    "proxy oracle, not a human, says so: a 5-NN vote on the clean training split is a strict "
    "majority for x's label on x and for x′'s class on x̃ (x′ left out), and x̃ is closer to x′ "
    "than to x. The error is the share of those on which the model keeps its prediction (higher: "
    "more excessive invariance); n = how many were found per seed (the same perturbations for "
    "both models); with n = 0 it is not measurable."
)
