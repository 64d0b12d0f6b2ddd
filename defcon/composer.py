"""The composer: apply a combination in the checker's order and measure each defense alone vs combined.

For every seed it builds the no-defense model, each defense's standalone model and the combined
model, all under the combination's threat scenario (the union of its defenses' adversaries, so
alone → combined isolates the interaction), measures every defense's metrics and the clean
accuracy on the models, and judges per defense whether it held, dropped or cannot be told
(`defcon.effectiveness`). Seeds are added, up to a cap, while a verdict is inconclusive. Trained
models and measurements come from a content-addressed, verified cache, so shared prefixes are
computed once and an interrupted run resumes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defcon.attacks import BadNets
from defcon.cache import ModelCache
from defcon.catalog import Catalog, builtin_catalog
from defcon.checker import TECHNIQUES, Verdict, check
from defcon.data import Dataset, Split, UserData, is_data_file, load_dataset, open_data_file
from defcon.defense import (
    Defense,
    Environment,
    InTrainingDefense,
    PostTrainingDefense,
    PreTrainingDefense,
)
from defcon.devices import place, resolve_device
from defcon.effectiveness import (
    MetricVerdict,
    Summary,
    combination_label,
    defense_outcome,
    judge,
    seed_plan,
)
from defcon.errors import DefconError
from defcon.fingerprint import code_of, core_code, probes_code
from defcon.models import (
    ArchConfig,
    InputLayer,
    ModelFactory,
    accuracy,
    arch_for,
    build_model,
    check_model,
    factory_name,
)
from defcon.probes import probe_factors
from defcon.profiles import Profile, get_profile
from defcon.records import CompositionRecord, DefenseResult, versions
from defcon.registry import make_defense
from defcon.training import CONVERGED_GAIN, TrainedModel, train, train_reference
from defcon.vocabulary import DefenseSpec, Stage, Threat

CLEAN_ACCURACY = "clean_accuracy"
NO_DEFENSE = "no defense"


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
    def names(self) -> frozenset[str]:
        return frozenset(d.name for d in self.defenses)


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
        dataset: str | UserData,
        *,
        profile: str | Profile = "quick",
        cache_dir: Path | str = "defcon-runs/cache",
        data_dir: Path | str | None = None,
        catalog: Catalog | None = None,
        configs: Mapping[str, Mapping[str, Any]] | None = None,
        log: Callable[[str], None] | None = None,
        model: str | ModelFactory | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        """`dataset`: a built-in name, a .npz path, or `UserData` (`defcon.data.from_arrays`,
        `read_csv`); `model`: a factory (input_shape, num_classes) → nn.Module, or its
        'module:function' name (default: defcon's CNN / MLP); `device`: auto, cpu, cuda[:N]."""
        if isinstance(dataset, str) and is_data_file(dataset):
            dataset = open_data_file(dataset)
        self.source: str | UserData = dataset
        self.dataset_name = dataset.name if isinstance(dataset, UserData) else dataset
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.log = log or (lambda message: None)
        self.device = resolve_device(device)
        self.model_factory = factory_name(model) if model is not None else None
        self.cache = ModelCache(cache_dir, log=self.log)
        self.data_dir = data_dir
        self.catalog = catalog or builtin_catalog()
        self.configs = {name: dict(cfg) for name, cfg in (configs or {}).items()}
        self._datasets: dict[int, Dataset] = {}
        self.dataset(0)  # fail fast on an unknown or missing dataset; every run needs seed 0
        check_model(self.arch(self.dataset(0)))  # and on a model that does not fit the data

    # ------------------------------------------------------------------ planning

    def dataset(self, seed: int) -> Dataset:
        if seed not in self._datasets:
            self._datasets[seed] = load_dataset(
                self.source,
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
        for name in names:
            problem = self.model_problem(self._defense(name), probe)
            if problem:
                raise DefconError(f"cannot compose with this model: {problem}")
        if not verdict.effective and not force:
            raise DefconError(
                f"refused: Def\\Con predicts a conflict. {verdict.explanation} "
                "Pass --force to measure it anyway."
            )
        return specs, verdict

    def _defense(self, name: str) -> Defense:
        return make_defense(name, self.configs.get(name), self.catalog)

    def arch(self, dataset: Dataset) -> ArchConfig:
        """The victim's architecture: the user's factory, or defcon's default for the data."""
        return arch_for(dataset, width=self.profile.width, factory=self.model_factory)

    def model_problem(self, defense: Defense, dataset: Dataset) -> str | None:
        """Why `defense` cannot handle the model this composer trains (before any training)."""
        arch = self.arch(dataset)
        if isinstance(defense, InTrainingDefense):
            arch = defense.adapt_arch(arch)
        return defense.model_problem(place(build_model(arch, seed=0), self.device), dataset)

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

    def _base_key(self, seed: int) -> dict[str, Any]:
        """What every model of this composer and seed depends on (code, data, profile, threads,
        device; the victim's architecture, a user's factory included, is in the model key)."""
        return {
            "code": core_code(),
            "dataset": self.source.describe()
            if isinstance(self.source, UserData)
            else self.dataset_name,
            # the folder only matters where the loader reads it; resolved, so ./x == /abs/x
            "data_dir": str(Path(self.data_dir).resolve())
            if self.data_dir and self.dataset_name == "fmnist"
            else None,
            "seed": seed,
            "profile": self.profile.model_dump(mode="json"),
            "threads": torch.get_num_threads(),
            "device": str(self.device),
        }

    def reference_model(self, env: Environment) -> nn.Module:
        """The independent model of `env`'s seed (see Environment), trained once and cached."""
        key = {**self._base_key(env.seed), "reference": "plain recipe on attacker_data"}

        def train_it() -> TrainedModel:
            self.log(f"seed {env.seed}: training the independent reference model")
            return train_reference(env)

        return place(self.cache.model(key, train_it, label="reference model").model, self.device)

    def run_pipeline(self, pipeline: Pipeline) -> PipelineResult:
        """Apply pre-training defenses, train (or load) the model, prepare post-training steps."""
        dataset = self.dataset(pipeline.seed)
        poisoner = BadNets.for_dataset(dataset, pipeline.seed) if pipeline.poisoned else None
        arch = self.arch(dataset)
        env = Environment(
            dataset=dataset, seed=pipeline.seed, profile=self.profile, poisoner=poisoner,
            arch=arch, deployed=pipeline.names, device=self.device,
        )  # fmt: skip
        env.reference_model = lambda: self.reference_model(env)
        train_split = dataset.train
        if poisoner is not None:
            train_split, _ = poisoner.poison(train_split, pipeline.seed)
        front: InputLayer | None = None  # the pre-training defenses' transform of every input
        for defense in pipeline.pre:
            train_split = defense.apply(train_split, env)
            seen = train_split if front is None else _through(front, train_split)
            layer = defense.input_layer(seen, env)
            if layer is not None:
                front = layer if front is None else front.then(layer)
        env.train_data = train_split
        model_key = {
            **self._base_key(pipeline.seed),
            "poisoner": poisoner.model_dump(mode="json") if poisoner else None,
            "pre": [_keyed(d) for d in pipeline.pre],
            "in": [_keyed(d) for d in pipeline.during],
            "arch": arch.model_dump(mode="json"),
        }
        names = [d.name for d in (*pipeline.pre, *pipeline.during)] or [NO_DEFENSE]

        def train_model() -> TrainedModel:
            self.log(f"seed {pipeline.seed}: training {' + '.join(names)}")
            return train(
                env, train_split, pipeline.during, description=" + ".join(names), input_layer=front
            )

        def build() -> nn.Module:
            trained = self.cache.model(model_key, train_model)
            env.record.update(trained.record)
            env.arch = trained.arch
            model = place(trained.model, self.device)
            for defense in pipeline.post:
                model = self.cache.timed(
                    f"applying {defense.name}", lambda d=defense, m=model: d.apply(m, env)
                )
            return model

        return PipelineResult(env, build, model_key, [_keyed(d) for d in pipeline.post])

    def measure(self, result: PipelineResult, defense: Defense | None) -> dict[str, float]:
        """A defense's metrics (or clean accuracy when `defense` is None) on a pipeline's model."""
        what = _keyed(defense) if defense is not None else CLEAN_ACCURACY
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

        label = f"measuring {defense.name}" if defense is not None else "clean accuracy"
        return self.cache.measurement(description, compute, label=label)

    def probe(self, result: PipelineResult) -> dict[str, float]:
        """The factor probes (defcon.probes) of a pipeline's model, cached like a measurement."""
        description = {
            "model": result.model_key, "post": result.post_keys, "probes": probes_code()
        }  # fmt: skip
        return self.cache.measurement(
            description, lambda: probe_factors(result.model, result.env), label="probing factors"
        )

    def training_facts(self, result: PipelineResult) -> dict[str, float]:
        """Facts the training recorded (convergence, ε, …), from the cache when possible."""
        if not result.env.record:
            _ = result.model
        return dict(result.env.record)

    def compose(
        self,
        names: Sequence[str],
        *,
        seeds: int = 3,
        max_seeds: int | None = None,
        seed_start: int = 0,
        force: bool = False,
        tolerances: Mapping[str, float] | None = None,
    ) -> CompositionRecord:
        """Measure a combination: no defense, each defense alone, combined, under one scenario.

        Starts with `seeds` seeds (seed_start, seed_start + 1, …) and adds one at a time, up to
        `max_seeds` (default: `seeds`, i.e. no extra seeds), while a verdict is inconclusive.
        """
        with warnings.catch_warnings():
            # Opacus and torch warn on every DP run (secure RNG off, backward hooks); the
            # record states the library versions, the terminal stays readable.
            for module in ("opacus", "torch", "captum", "fairlearn", "sklearn"):
                warnings.filterwarnings("ignore", module=module)
            # raised by torch on behalf of the caller's backward() under Opacus' hooks
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return self._compose(
                names,
                seeds=seeds,
                max_seeds=seed_plan(seeds, max_seeds, seed_start),
                seed_start=seed_start,
                force=force,
                tolerances=tolerances,
            )

    def _measure_seed(self, order: Sequence[str], seed: int, poisoned: bool, arms: _Arms) -> None:
        """One seed of every arm, all under the combination's scenario (`poisoned`)."""
        no_defense = self.run_pipeline(self.pipeline([], seed, poisoned))
        combo_pipeline = self.pipeline(order, seed, poisoned)
        combo = self.run_pipeline(combo_pipeline)
        arms.clean[NO_DEFENSE].append(self.measure(no_defense, None)[CLEAN_ACCURACY])
        arms.clean["combined"].append(self.measure(combo, None)[CLEAN_ACCURACY])
        arms.facts[NO_DEFENSE].append(self.training_facts(no_defense))
        arms.probes[NO_DEFENSE].append(self.probe(no_defense))
        arms.probes["combined"].append(self.probe(combo))
        for defense in combo_pipeline.defenses:
            solo = self.run_pipeline(self.pipeline([defense.name], seed, poisoned))
            arms.clean[defense.name].append(self.measure(solo, None)[CLEAN_ACCURACY])
            arms.probes[defense.name].append(self.probe(solo))
            for arm, result in (("alone", solo), ("combined", combo), ("none", no_defense)):
                for metric, value in self.measure(result, defense).items():
                    arms.values[(defense.name, metric, arm)].append(value)

    def _judge(
        self, specs: Sequence[DefenseSpec], arms: _Arms, tolerances: Mapping[str, float]
    ) -> list[tuple[DefenseSpec, tuple[MetricVerdict, ...]]]:
        judged = []
        for spec in specs:
            verdicts = tuple(
                judge(
                    spec.name,
                    metric,
                    arms.values[(spec.name, metric.name, "alone")],
                    arms.values[(spec.name, metric.name, "combined")],
                    arms.values[(spec.name, metric.name, "none")],
                    tolerances.get(metric.name),
                )
                for metric in spec.metrics
            )
            judged.append((spec, verdicts))
        return judged

    def _compose(
        self,
        names: Sequence[str],
        *,
        seeds: int,
        max_seeds: int,
        seed_start: int,
        force: bool,
        tolerances: Mapping[str, float] | None,
    ) -> CompositionRecord:
        started = time.perf_counter()
        before = dict(self.cache.seconds)
        specs, verdict = self.plan(names, force=force)
        tolerances = validate_tolerances(tolerances, specs)
        order = verdict.order
        poisoned = any(Threat.POISONER in s.threats for s in specs)
        ordered_specs = sorted(specs, key=lambda s: order.index(s.name))
        arms = _Arms()
        seed_values: list[int] = []
        while True:
            seed = seed_start + len(seed_values)
            self.log(
                f"seed {len(seed_values) + 1}/{seeds if len(seed_values) < seeds else max_seeds}: "
                f"{' → '.join(order)} on {self.dataset_name}"
            )
            self._measure_seed(order, seed, poisoned, arms)
            seed_values.append(seed)
            if len(seed_values) < seeds:
                continue
            judged = self._judge(ordered_specs, arms, tolerances)
            undecided = [
                f"{v.defense}.{v.metric}"
                for _, verdicts in judged
                for v in verdicts
                if v.judged and not v.conclusive
            ]
            if not undecided or len(seed_values) >= max_seeds:
                break
            self.log(
                f"inconclusive after {len(seed_values)} seeds ({', '.join(undecided)}): adding a seed"
            )
        results = tuple(
            DefenseResult(
                defense=spec.name,
                stage=spec.stage,
                metrics=verdicts,
                outcome=defense_outcome(verdicts),
                clean_accuracy_alone=Summary.of(arms.clean[spec.name]),
            )
            for spec, verdicts in judged
        )
        predicted = {
            name: check(specs, technique=name, catalog=self.catalog).label for name in TECHNIQUES
        }
        notes = degenerate_models(
            self.dataset(seed_start),
            {"combined": arms.clean["combined"], **{f"{n} alone": arms.clean[n] for n in order}},
        )
        notes += unconverged(arms.facts[NO_DEFENSE])
        spent = {
            label: round(value - before.get(label, 0.0), 2)
            for label, value in self.cache.seconds.items()
            if value - before.get(label, 0.0) > 0
        }
        return CompositionRecord(
            defenses=tuple(names),
            order=order,
            dataset=self.dataset_name,
            profile=self.profile.name,
            seeds=tuple(seed_values),
            seed_start=seed_start,
            max_seeds=max_seeds,
            scenario=_scenario(specs),
            results=results,
            clean_accuracy_no_defense=Summary.of(arms.clean[NO_DEFENSE]),
            clean_accuracy_combined=Summary.of(arms.clean["combined"]),
            factor_probes=arms.probe_summaries(),
            label=combination_label([r.outcome for r in results]),
            predicted=predicted,
            forced=force,
            tolerances=tolerances,
            configs={name: dict(cfg) for name, cfg in self.configs.items() if name in order},
            threads=torch.get_num_threads(),
            device=str(self.device),
            model=self.model_factory,
            dataset_sha256=self.source.digest if isinstance(self.source, UserData) else None,
            code=core_code(),
            versions=versions(),
            wall_time_s=round(time.perf_counter() - started, 2),
            cache=self.cache.stats(),
            seconds=spent,
            warnings=notes,
        )


@dataclass
class _Arms:
    """Per-seed values gathered so far: (defense, metric, arm) → values; clean accuracy by arm."""

    values: defaultdict[tuple[str, str, str], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    clean: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    facts: defaultdict[str, list[dict[str, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    probes: defaultdict[str, list[dict[str, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def probe_summaries(self) -> dict[str, dict[str, Summary]]:
        """Arm → factor probe → mean ± std over seeds (probes every seed of the arm reported)."""
        return {
            arm: {
                probe: Summary.of([reading[probe] for reading in readings])
                for probe in sorted(set.intersection(*(set(r) for r in readings)))
            }
            for arm, readings in self.probes.items()
            if readings
        }


@torch.no_grad()
def _through(layer: InputLayer, split: Split) -> Split:
    """The split as the model sees it behind `layer` (what a later input layer is fitted on)."""
    return split.with_(x=layer(split.x))


def _keyed(defense: Defense) -> dict[str, Any]:
    """A defense's cache key plus the hash of the code behind it."""
    return {**defense.cache_key(), "code": code_of(type(defense))}


def _scenario(specs: Sequence[DefenseSpec]) -> tuple[str, ...]:
    """The threats every arm runs under: the union of the defenses' adversaries."""
    return tuple(sorted({threat.value for spec in specs for threat in spec.threats}))


def validate_tolerances(
    tolerances: Mapping[str, float] | None, specs: Sequence[DefenseSpec]
) -> dict[str, float]:
    """Tolerance overrides: known metrics, finite numbers ≥ 0 (checked before any training)."""
    tolerances = dict(tolerances or {})
    metric_names = {m.name for spec in specs for m in spec.metrics}
    for metric, value in tolerances.items():
        if metric not in metric_names:
            raise DefconError(
                f"tolerance given for metric '{metric}', which no defense of this combination "
                f"reports; accepted: {', '.join(sorted(metric_names))}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DefconError(
                f"tolerance for '{metric}' must be a number, got {type(value).__name__} {value!r}"
            )
        if not math.isfinite(value) or value < 0:
            raise DefconError(f"tolerance for '{metric}' must be a finite number ≥ 0, got {value}")
    return {metric: float(value) for metric, value in tolerances.items()}


def unconverged(facts: Sequence[Mapping[str, float]]) -> tuple[str, ...]:
    """Warnings for undefended models whose last epoch still improved validation accuracy."""
    gains = [
        f["training.last_epoch_val_gain"] for f in facts if "training.last_epoch_val_gain" in f
    ]
    if gains and max(gains) > CONVERGED_GAIN:
        return (
            f"the undefended model is not converged: its last epoch still added "
            f"{max(gains):.3f} validation accuracy on some seed (> {CONVERGED_GAIN}); "
            "the profile may be too short",
        )
    return ()
