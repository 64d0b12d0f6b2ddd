"""Measuring arms: no defense, each defense alone and their combination, seed by seed.

The one loop behind `Composer.compose` (every arm), `measure_standalone` (a one-defense
"combination": no defense and the defense alone, no combined arm) and `defcon audit` (risk
attacks as readings, one comparison per adversary scenario). Per seed, every arm's pipeline runs
under the same scenario; each arm gets its clean accuracy and the extra readings that apply to
it (factor probes, invariance, risk attacks); each defense gets its own metrics on the three
models that compare it: no defense, alone, combined. The defenses' metrics are read with the
instance of the widest pipeline that applies the defense (the combination's, else its own).

Order within a seed: the no-defense and combined arms first, then one defense at a time (its
alone arm, then its metrics), so an interrupted run leaves whole defenses in the cache.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

from defcon.engine.defense import Defense
from defcon.measure.pipelines import CLEAN_ACCURACY, NO_DEFENSE, Pipeline, PipelineResult

COMBINED = "combined"
Role = Literal["none", "alone", "combined"]  # which model a defense's metric was read on


@dataclass(frozen=True)
class Arm:
    """One model of a comparison: its label and the defenses it applies, in order."""

    label: str
    defenses: tuple[str, ...]


def arms_of(order: Sequence[str]) -> tuple[Arm, ...]:
    """No defense, each defense alone and, for two or more, the combination in `order`."""
    arms = [Arm(NO_DEFENSE, ()), *(Arm(name, (name,)) for name in order)]
    if len(order) > 1:
        arms.append(Arm(COMBINED, tuple(order)))
    return tuple(arms)


@dataclass(frozen=True)
class Reading:
    """Something read on an arm's model besides clean accuracy and the defenses' own metrics."""

    name: str
    read: Callable[[Arm, PipelineResult], Mapping[str, float]]
    arms: frozenset[str] | None = None  # the arm labels it is read on (None: every arm)

    def applies(self, arm: Arm) -> bool:
        return self.arms is None or arm.label in self.arms


class RunsPipelines(Protocol):
    """What the loop needs: the composer (so spies and subclasses see every run) or a runner."""

    def pipeline(self, names: Sequence[str], seed: int, poisoned: bool) -> Pipeline: ...

    def run_pipeline(self, pipeline: Pipeline) -> PipelineResult: ...

    def measure(self, result: PipelineResult, defense: Defense | None) -> dict[str, float]: ...


class ArmComparison:
    """The arms of `order` measured seed by seed under one scenario (`poisoned`).

    `values[(defense, metric, role)]`, `clean[arm]` and `readings[(arm, reading)]` hold one
    entry per seed, in the order of `seeds`; `add_seed` adds one, so a caller can add seeds
    while its verdicts are inconclusive.
    """

    def __init__(
        self,
        runner: RunsPipelines,
        order: Sequence[str],
        *,
        poisoned: bool,
        readings: Sequence[Reading] = (),
        clean: bool = True,
        own_metrics: bool = True,
    ) -> None:
        self.runner = runner
        self.arms = arms_of(order)
        self.poisoned = poisoned
        self.extra = tuple(readings)
        self.read_clean = clean
        self.own_metrics = own_metrics
        self.seeds: list[int] = []
        self.values: defaultdict[tuple[str, str, Role], list[float]] = defaultdict(list)
        self.clean: defaultdict[str, list[float]] = defaultdict(list)
        self.readings: defaultdict[tuple[str, str], list[Mapping[str, float]]] = defaultdict(list)

    def arm(self, label: str) -> Arm:
        return next(arm for arm in self.arms if arm.label == label)

    def add_seed(self, seed: int) -> None:
        """Run and measure every arm on `seed`."""
        runs: dict[str, tuple[Pipeline, PipelineResult]] = {}

        def run(arm: Arm) -> PipelineResult:
            pipeline = self.runner.pipeline(arm.defenses, seed, self.poisoned)
            runs[arm.label] = (pipeline, self.runner.run_pipeline(pipeline))
            return runs[arm.label][1]

        shared = [arm for arm in self.arms if arm.label in (NO_DEFENSE, COMBINED)]
        for arm in shared:
            run(arm)
        for arm in shared:
            self._read(arm, runs[arm.label][1])
        for arm in self.arms:
            if arm in shared:
                continue
            (name,) = arm.defenses
            self._read(arm, run(arm))
            if self.own_metrics:
                self._measure_defense(name, runs)
        self.seeds.append(seed)

    def _read(self, arm: Arm, result: PipelineResult) -> None:
        if self.read_clean:
            self.clean[arm.label].append(self.runner.measure(result, None)[CLEAN_ACCURACY])
        for reading in self.extra:
            if reading.applies(arm):
                self.readings[(arm.label, reading.name)].append(reading.read(arm, result))

    def _measure_defense(
        self, name: str, runs: Mapping[str, tuple[Pipeline, PipelineResult]]
    ) -> None:
        widest = runs[COMBINED][0] if COMBINED in runs else runs[name][0]
        defense = next(d for d in widest.defenses if d.name == name)
        roles: tuple[tuple[Role, str], ...] = (
            ("alone", name), ("combined", COMBINED), ("none", NO_DEFENSE)
        )  # fmt: skip
        for role, label in roles:
            if label in runs:
                for metric, value in self.runner.measure(runs[label][1], defense).items():
                    self.values[(name, metric, role)].append(value)

    def series(self, arm: str, reading: str) -> list[Mapping[str, float]]:
        """A reading's per-seed results on an arm (empty where it was not read)."""
        return list(self.readings.get((arm, reading), []))


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence the libraries' per-run warnings while arms are measured.

    Opacus and torch warn on every DP run (secure RNG off, backward hooks); records state the
    library versions, and the terminal stays readable.
    """
    with warnings.catch_warnings():
        for module in ("opacus", "torch", "captum", "fairlearn", "sklearn"):
            warnings.filterwarnings("ignore", module=module)
        # raised by torch on behalf of the caller's backward() under Opacus' hooks
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield
