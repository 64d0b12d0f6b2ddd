"""Each defense alone vs no defense: does the mechanism do its job? (the stage benchmarks' core)

For a defense and a dataset, over seeds: the no-defense model and the defended model are built
under the defense's own threat scenario (same cache as the composer, so the bench reuses them),
and the defense's metrics plus clean accuracy are measured on both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from defcon.composer import CLEAN_ACCURACY, Composer
from defcon.effectiveness import Summary
from defcon.vocabulary import Direction, Threat


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


def measure_standalone(composer: Composer, name: str, seeds: int) -> StandaloneResult:
    """Measure defense `name` alone vs no defense over seeds 0 … seeds − 1."""
    started = time.perf_counter()
    spec = composer.catalog[name]
    poisoned = Threat.POISONER in spec.threats
    none_values: dict[str, list[float]] = {m.name: [] for m in spec.metrics}
    with_values: dict[str, list[float]] = {m.name: [] for m in spec.metrics}
    clean: tuple[list[float], list[float]] = ([], [])
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
    return "\n".join(lines)
