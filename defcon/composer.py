"""The composer: apply a combination in the checker's order and measure each defense alone vs combined.

For every seed it builds the no-defense model, each defense's standalone model and the combined
model, each under its threat scenario (a BadNets poisoner is active when a defense is measured
against one), measures every defense's metrics and the clean accuracy on the models, and judges
per defense whether it stayed effective (`defcon.effectiveness`). Trained models and
measurements come from a content-addressed cache, so shared prefixes are computed once and an
interrupted run resumes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from torch import nn

from defcon.attacks import BadNets
from defcon.cache import ModelCache
from defcon.catalog import Catalog, builtin_catalog
from defcon.checker import TECHNIQUES, Verdict, check
from defcon.data import Dataset, load_dataset
from defcon.defense import (
    Defense,
    Environment,
    InTrainingDefense,
    PostTrainingDefense,
    PreTrainingDefense,
)
from defcon.effectiveness import Summary, judge
from defcon.errors import DefconError
from defcon.models import accuracy, arch_for
from defcon.profiles import Profile, get_profile
from defcon.records import CompositionRecord, DefenseResult, versions
from defcon.training import TrainedModel, train
from defcon.vocabulary import DefenseSpec, Stage, Threat
from pipeline_stages.registry import make_defense

CACHE_VERSION = 1  # bump when a change to training or measuring invalidates cached results
CLEAN_ACCURACY = "clean_accuracy"


def applicability_problem(spec: DefenseSpec, dataset: Dataset) -> str | None:
    """Why `spec` cannot run on `dataset` (None when it can)."""
    if dataset.kind not in spec.data_kinds:
        kinds = ", ".join(sorted(spec.data_kinds))
        return (
            f"'{spec.name}' applies to {kinds} data only, and {dataset.name} is {dataset.kind} data"
        )
    if spec.needs_sensitive_attribute and dataset.sensitive_attribute is None:
        return f"'{spec.name}' needs a sensitive attribute, and {dataset.name} has none"
    return None


def degenerate_models(dataset: Dataset, clean: Mapping[str, Sequence[float]]) -> tuple[str, ...]:
    """Warnings for models no better than always predicting the majority class.

    Such a model makes some metrics trivially good (a constant predictor has an equalized-odds
    gap of 0), so its verdicts deserve suspicion.
    """
    counts = dataset.test.y.bincount()
    majority = float(counts.max()) / float(counts.sum())
    return tuple(
        f"the {what} model is no better than predicting the majority class "
        f"(clean accuracy {min(values):.3f} ≤ {majority:.3f} on some seed); its metrics may be trivial"
        for what, values in clean.items()
        if values and min(values) <= majority + 0.005
    )


@dataclass
class Pipeline:
    """One model's recipe: seed, scenario and the ordered defenses of each stage."""

    seed: int
    poisoned: bool
    pre: tuple[PreTrainingDefense, ...] = ()
    during: tuple[InTrainingDefense, ...] = ()
    post: tuple[PostTrainingDefense, ...] = ()

    @property
    def defenses(self) -> tuple[Defense, ...]:
        return (*self.pre, *self.during, *self.post)

    @property
    def scenario(self) -> tuple[str, ...]:
        threats = {threat for d in self.defenses for threat in d.spec.threats}
        if self.poisoned:
            threats.add(Threat.POISONER)
        return tuple(sorted(t.value for t in threats))


@dataclass
class PipelineResult:
    """A pipeline's final model (built lazily: not needed when every measurement is cached)."""

    env: Environment
    build: Callable[[], nn.Module]
    model_key: dict[str, Any]
    post_keys: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def model(self) -> nn.Module:
        return self.build()


class Composer:
    """Runs compositions on one dataset and profile, sharing a model cache across them."""

    def __init__(
        self,
        dataset: str,
        *,
        profile: str | Profile = "quick",
        cache_dir: Path | str = "defcon-runs/cache",
        data_dir: Path | str | None = None,
        catalog: Catalog | None = None,
        configs: Mapping[str, Mapping[str, Any]] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.dataset_name = dataset
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.cache = ModelCache(cache_dir)
        self.data_dir = data_dir
        self.catalog = catalog or builtin_catalog()
        self.configs = {name: dict(cfg) for name, cfg in (configs or {}).items()}
        self.log = log or (lambda message: None)
        self._datasets: dict[int, Dataset] = {}
        self.dataset(0)  # fail fast on an unknown or missing dataset; every run needs seed 0

    # ------------------------------------------------------------------ planning

    def dataset(self, seed: int) -> Dataset:
        if seed not in self._datasets:
            self._datasets[seed] = load_dataset(
                self.dataset_name,
                seed=seed,
                max_train=self.profile.train_cap(self.dataset_name),
                max_eval=self.profile.eval_cap(self.dataset_name),
                data_dir=self.data_dir,
            )
        return self._datasets[seed]

    def plan(
        self, names: Sequence[str], *, force: bool = False
    ) -> tuple[list[DefenseSpec], Verdict]:
        """Validate a combination and return its specs and Def\\Con verdict (raises DefconError)."""
        specs = self.catalog.resolve(names)
        verdict = check(specs, technique="defcon", catalog=self.catalog)
        if not verdict.composable:
            raise DefconError(f"cannot compose: {verdict.clashes[0].sentence()}")
        probe = self.dataset(0)
        for spec in specs:
            problem = applicability_problem(spec, probe)
            if problem:
                raise DefconError(f"cannot compose on {self.dataset_name}: {problem}")
        if not verdict.effective and not force:
            raise DefconError(
                f"refused: Def\\Con predicts a conflict. {verdict.explanation} "
                "Pass --force to measure it anyway."
            )
        return specs, verdict

    def _defense(self, name: str) -> Defense:
        return make_defense(name, self.configs.get(name))

    def pipeline(self, names: Sequence[str], seed: int, poisoned: bool) -> Pipeline:
        defenses = [self._defense(name) for name in names]
        return Pipeline(
            seed=seed,
            poisoned=poisoned,
            pre=tuple(d for d in defenses if d.spec.stage is Stage.PRE),
            during=tuple(d for d in defenses if d.spec.stage is Stage.IN),
            post=tuple(d for d in defenses if d.spec.stage is Stage.POST),
        )

    # ------------------------------------------------------------------ running

    def run_pipeline(self, pipeline: Pipeline) -> PipelineResult:
        """Apply pre-training defenses, train (or load) the model, prepare post-training steps."""
        dataset = self.dataset(pipeline.seed)
        poisoner = BadNets.for_dataset(dataset, pipeline.seed) if pipeline.poisoned else None
        arch = arch_for(dataset, width=self.profile.width)
        env = Environment(
            dataset=dataset, seed=pipeline.seed, profile=self.profile, poisoner=poisoner, arch=arch
        )
        train_split = dataset.train
        if poisoner is not None:
            train_split, _ = poisoner.poison(train_split, pipeline.seed)
        for defense in pipeline.pre:
            train_split = defense.apply(train_split, env)
        env.train_data = train_split
        model_key = {
            "cache_version": CACHE_VERSION,
            "dataset": self.dataset_name,
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "seed": pipeline.seed,
            "profile": self.profile.model_dump(mode="json"),
            "poisoner": poisoner.model_dump(mode="json") if poisoner else None,
            "pre": [d.cache_key() for d in pipeline.pre],
            "in": [d.cache_key() for d in pipeline.during],
            "arch": arch.model_dump(mode="json"),
        }
        names = [d.name for d in (*pipeline.pre, *pipeline.during)] or ["no defense"]

        def train_model() -> TrainedModel:
            self.log(f"seed {pipeline.seed}: training {' + '.join(names)}")
            return train(env, train_split, pipeline.during, description=" + ".join(names))

        def build() -> nn.Module:
            trained = self.cache.model(model_key, train_model)
            env.record.update(trained.record)
            env.arch = trained.arch
            model = trained.model
            for defense in pipeline.post:
                model = defense.apply(model, env)
            return model

        return PipelineResult(env, build, model_key, [d.cache_key() for d in pipeline.post])

    def measure(self, result: PipelineResult, defense: Defense | None) -> dict[str, float]:
        """A defense's metrics (or clean accuracy when `defense` is None) on a pipeline's model."""
        what = defense.cache_key() if defense is not None else CLEAN_ACCURACY
        description = {"model": result.model_key, "post": result.post_keys, "measure": what}

        def compute() -> dict[str, float]:
            model = result.model  # builds (and fills env.record) on first use
            if defense is None:
                test = result.env.dataset.test
                return {CLEAN_ACCURACY: accuracy(model, test.x, test.y)}
            metrics = defense.measure(model, result.env)
            declared = {m.name for m in defense.spec.metrics}
            if set(metrics) != declared:
                raise RuntimeError(
                    f"{defense.name}.measure returned {sorted(metrics)}, spec declares {sorted(declared)}"
                )
            return metrics

        return self.cache.measurement(description, compute)

    def compose(
        self,
        names: Sequence[str],
        *,
        seeds: int = 3,
        force: bool = False,
        tolerances: Mapping[str, float] | None = None,
    ) -> CompositionRecord:
        """Measure a combination alone vs combined over `seeds` seeds (0 … seeds − 1)."""
        with warnings.catch_warnings():
            # Opacus and torch warn on every DP run (secure RNG off, backward hooks); the
            # record states the library versions, the terminal stays readable.
            for module in ("opacus", "torch", "captum", "fairlearn", "sklearn"):
                warnings.filterwarnings("ignore", module=module)
            # raised by torch on behalf of the caller's backward() under Opacus' hooks
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return self._compose(names, seeds=seeds, force=force, tolerances=tolerances)

    def _compose(
        self,
        names: Sequence[str],
        *,
        seeds: int,
        force: bool,
        tolerances: Mapping[str, float] | None,
    ) -> CompositionRecord:
        if seeds < 1:
            raise DefconError(f"--seeds must be at least 1, got {seeds}")
        started = time.perf_counter()
        specs, verdict = self.plan(names, force=force)
        tolerances = dict(tolerances or {})
        metric_names = {m.name for spec in specs for m in spec.metrics}
        for metric in tolerances:
            if metric not in metric_names:
                raise DefconError(
                    f"tolerance given for metric '{metric}', which no defense of this combination "
                    f"reports; accepted: {', '.join(sorted(metric_names))}"
                )
        order = verdict.order
        poisoned_combo = any(Threat.POISONER in s.threats for s in specs)
        seed_values = list(range(seeds))
        alone: dict[str, dict[str, list[float]]] = {s.name: {} for s in specs}
        combined: dict[str, dict[str, list[float]]] = {s.name: {} for s in specs}
        baseline: dict[str, dict[str, list[float]]] = {s.name: {} for s in specs}
        clean_alone: dict[str, list[float]] = {s.name: [] for s in specs}
        clean_none: list[float] = []
        clean_combined: list[float] = []
        scenarios_alone: dict[str, tuple[str, ...]] = {}
        for seed in seed_values:
            self.log(f"seed {seed}: {' → '.join(order)} on {self.dataset_name}")
            no_defense = self.run_pipeline(self.pipeline([], seed, poisoned_combo))
            combo_pipeline = self.pipeline(order, seed, poisoned_combo)
            combo = self.run_pipeline(combo_pipeline)
            clean_none.append(self.measure(no_defense, None)[CLEAN_ACCURACY])
            clean_combined.append(self.measure(combo, None)[CLEAN_ACCURACY])
            for defense in combo_pipeline.defenses:
                spec = self.catalog[defense.name]
                solo_pipeline = self.pipeline([spec.name], seed, Threat.POISONER in spec.threats)
                solo = self.run_pipeline(solo_pipeline)
                scenarios_alone[spec.name] = solo_pipeline.scenario
                clean_alone[spec.name].append(self.measure(solo, None)[CLEAN_ACCURACY])
                for target, result in (
                    (alone, solo), (combined, combo), (baseline, no_defense)
                ):  # fmt: skip
                    for metric, value in self.measure(result, defense).items():
                        target[spec.name].setdefault(metric, []).append(value)
        results = []
        for spec in sorted(specs, key=lambda s: order.index(s.name)):
            verdicts = tuple(
                judge(
                    spec.name,
                    metric,
                    alone[spec.name][metric.name],
                    combined[spec.name][metric.name],
                    baseline[spec.name][metric.name],
                    tolerances.get(metric.name),
                )
                for metric in spec.metrics
            )
            results.append(
                DefenseResult(
                    defense=spec.name,
                    stage=spec.stage,
                    metrics=verdicts,
                    effective=all(v.effective for v in verdicts),
                    clean_accuracy_alone=Summary.of(clean_alone[spec.name]),
                    scenario_alone=scenarios_alone[spec.name],
                )
            )
        predicted = {
            name: check(specs, technique=name, catalog=self.catalog).label for name in TECHNIQUES
        }
        notes = degenerate_models(
            self.dataset(0),
            {"combined": clean_combined, **{f"{n} alone": v for n, v in clean_alone.items()}},
        )
        return CompositionRecord(
            defenses=tuple(names),
            order=order,
            dataset=self.dataset_name,
            profile=self.profile.name,
            seeds=tuple(seed_values),
            scenario=combo_pipeline.scenario,
            results=tuple(results),
            clean_accuracy_no_defense=Summary.of(clean_none),
            clean_accuracy_combined=Summary.of(clean_combined),
            label="effective" if all(r.effective for r in results) else "ineffective",
            predicted=predicted,
            forced=force,
            tolerances=tolerances,
            versions=versions(),
            wall_time_s=round(time.perf_counter() - started, 2),
            cache=self.cache.stats(),
            warnings=notes,
        )
