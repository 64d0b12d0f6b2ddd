"""The composer: apply a combination in the checker's order and measure each defense alone vs combined.

For every seed it builds the no-defense model, each defense's standalone model and the combined
model, all under the combination's threat scenario (the union of its defenses' adversaries, so
alone → combined isolates the interaction), measures every defense's metrics and the clean
accuracy on the models, and judges per defense whether it held, dropped or cannot be told
(`defcon.effectiveness`). Seeds are added, up to a cap, while a verdict is inconclusive. Trained
models and measurements come from a content-addressed, verified cache, so shared prefixes are
computed once and an interrupted run resumes.

`Composer` is the façade over three layers, each usable alone: `defcon.planning.rules` (validating a
combination, torch-free), `defcon.measure.pipelines` (building, training and measuring one model, the
only place environments and cache keys are made) and `defcon.measure.arms` (the seed × arm loop shared
with the standalone benchmarks and the audit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from defcon.catalog import Catalog, builtin_catalog
from defcon.checker import Verdict
from defcon.checker.api import predictions
from defcon.effectiveness import (
    MetricVerdict,
    Summary,
    combination_label,
    defense_outcome,
    judge,
    looks,
    read_at_looks,
)
from defcon.engine.data import Dataset, UserData, dataset_source
from defcon.engine.defense import Defense, Environment
from defcon.engine.devices import resolve_device
from defcon.engine.fingerprint import core_code, rule_code
from defcon.engine.models import ArchConfig, ModelFactory, check_model, factory_name
from defcon.engine.rmia import MEMBERSHIP_METRICS
from defcon.engine.settings import RunSettings, training_used
from defcon.measure.arms import COMBINED, ArmComparison, Reading, quiet_libraries
from defcon.measure.cache import ModelCache
from defcon.measure.model_notices import ChangedPredictions, acted_notices, data_and_model_notices
from defcon.measure.pipelines import (
    CLEAN_ACCURACY,
    NO_DEFENSE,
    Pipeline,
    PipelineResult,
    PipelineRunner,
)
from defcon.measure.reliability import underfit_reasons
from defcon.planning.combination import Plan, plan_combination
from defcon.planning.notices import ACTED
from defcon.planning.orders import MEASURED_ORDERS, check_order_choice, given_order
from defcon.planning.profiles import Profile, get_profile
from defcon.planning.records import CompositionRecord, DefenseResult, versions
from defcon.planning.rules import DataFacts, applicability_problem, validate_tolerances
from defcon.vocabulary import DefenseSpec

__all__ = [
    "CLEAN_ACCURACY",
    "NO_DEFENSE",
    "Composer",
    "Pipeline",
    "PipelineResult",
    "applicability_problem",
    "degenerate_models",
    "validate_tolerances",
]

PROBES = "probes"
FACTS = "facts"


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
        """`dataset`: a built-in name, a .npz path, or `UserData` (`defcon.engine.data.from_arrays`,
        `read_csv`); `model`: a factory (input_shape, num_classes) → nn.Module, or its
        'module:function' name (default: defcon's CNN / MLP); `device`: auto, cpu, cuda[:N]."""
        dataset = dataset_source(dataset)
        resolved_profile = get_profile(profile) if isinstance(profile, str) else profile
        self.log = log or (lambda message: None)
        self.settings: RunSettings | None = None  # set by from_settings: the run's seeds
        self.fitted: dict[str, float] = {}  # early stopping's facts (defcon.engine.fitting)
        resolved_device = resolve_device(device)
        model_factory = factory_name(model) if model is not None else None
        cache = ModelCache(cache_dir, log=self.log)
        self.runner = PipelineRunner(
            dataset, profile=resolved_profile, cache=cache, device=resolved_device,
            catalog=catalog or builtin_catalog(),
            configs={name: dict(cfg) for name, cfg in (configs or {}).items()},
            data_dir=data_dir, model_factory=model_factory, log=self.log,
        )  # fmt: skip
        self.dataset(0)  # fail fast on an unknown or missing dataset; every run needs seed 0
        check_model(self.arch(self.dataset(0)))  # and on a model that does not fit the data

    @classmethod
    def from_settings(
        cls,
        settings: RunSettings,
        *,
        cache_dir: Path | str = "defcon-runs/cache",
        log: Callable[[str], None] | None = None,
        source: str | UserData | None = None,
        catalog: Catalog | None = None,
    ) -> Composer:
        """The composer of one run's settings (checked at the edge, kept as `self.settings`:
        `compose` and the auditor read their seeds from it). `source` and `catalog`: the
        settings' data and catalog when the caller has already read them. A user's own data
        without `epochs` trains with early stopping (`defcon.engine.fitting`)."""
        from defcon.engine.fitting import fit_epochs

        source = settings.source() if source is None else source
        composer = cls(
            source, profile=settings.trained_with(), cache_dir=cache_dir,
            data_dir=settings.data_dir, log=log,
            catalog=settings.specs() if catalog is None else catalog, model=settings.model,
            device=settings.device, configs=settings.configs,
        )  # fmt: skip
        composer.settings = settings
        if settings.epochs is None and not isinstance(source, str):
            fit_epochs(composer, settings.seed_start)
        return composer

    def seed_plan(
        self, seeds: int | None, max_seeds: int | None = None, seed_start: int | None = None
    ) -> RunSettings:
        """The seeds a run uses: each value given, else the run settings' (or the defaults),
        checked (a `DefconError` naming the option)."""
        base = self.settings or RunSettings()
        return RunSettings.checked(
            seeds=base.seeds if seeds is None else seeds,
            max_seeds=base.max_seeds if max_seeds is None else max_seeds,
            seed_start=base.seed_start if seed_start is None else seed_start,
        )

    # The runner's settings, read-only here: the façade and the runner cannot disagree.

    def _code(self, names: Sequence[str]) -> str:
        """The record's code hash (it names the record file): the core's, plus, where the run
        used a user's code, the implementation of each defense from a user's catalog and the
        model factory's package, so another implementation under the same name is another
        record. Built-in defenses with defcon's models keep the core hash alone."""
        import hashlib
        import json

        from defcon.engine.fingerprint import code_of
        from defcon.engine.models import factory_code
        from defcon.engine.registry import defense_class

        builtin = builtin_catalog()
        used: dict[str, Any] = {
            name: [self.catalog[name].implementation, code_of(defense_class(self.catalog[name]))]
            for name in names
            if name not in builtin or self.catalog[name] != builtin[name]
        }
        if self.model_factory is not None:
            used["model"] = factory_code(self.model_factory)
        if not used:
            return core_code()
        text = json.dumps(used, sort_keys=True)
        return f"{core_code()}+{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    @property
    def source(self) -> str | UserData:
        return self.runner.source

    @property
    def dataset_name(self) -> str:
        return self.runner.dataset_name

    @property
    def profile(self) -> Profile:
        return self.runner.profile

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def model_factory(self) -> str | None:
        return self.runner.model_factory

    @property
    def cache(self) -> ModelCache:
        return self.runner.cache

    @property
    def data_dir(self) -> Path | str | None:
        return self.runner.data_dir

    @property
    def catalog(self) -> Catalog:
        return self.runner.catalog

    @property
    def configs(self) -> Mapping[str, Mapping[str, Any]]:
        return self.runner.configs

    # ------------------------------------------------------------------ planning

    def dataset(self, seed: int) -> Dataset:
        return self.runner.dataset(seed)

    def facts(self) -> DataFacts:
        """What planning needs to know about the data (read off seed 0's split)."""
        return DataFacts.of(self.dataset(0))

    def plan(
        self, names: Sequence[str], *, force: bool = False
    ) -> tuple[list[DefenseSpec], Verdict]:
        """Validate a combination and return its specs and Def\\Con verdict (raises DefconError)."""
        planned = self._plan(names, force=force)
        return list(planned.specs), planned.verdict

    def _plan(self, names: Sequence[str], *, force: bool) -> Plan:
        probe = self.dataset(0)
        return plan_combination(
            names, self.catalog, DataFacts.of(probe), force=force,
            model_problem=lambda name: self.model_problem(self.defense(name), probe),
        )  # fmt: skip

    def defense(self, name: str) -> Defense:
        """A fresh instance of defense `name` with this composer's settings for it."""
        return self.runner.defense(name)

    def arch(self, dataset: Dataset) -> ArchConfig:
        """The victim's architecture: the user's factory, or defcon's default for the data."""
        return self.runner.arch(dataset)

    def model_problem(self, defense: Defense, dataset: Dataset) -> str | None:
        """Why `defense` cannot handle the model this composer trains (before any training)."""
        return self.runner.model_problem(defense, dataset)

    def pipeline(self, names: Sequence[str], seed: int, poisoned: bool) -> Pipeline:
        return self.runner.pipeline(names, seed, poisoned)

    # ------------------------------------------------------------------ running

    def _base_key(self, seed: int) -> dict[str, Any]:
        """What every model of this composer and seed depends on (see PipelineRunner.base_key)."""
        return self.runner.base_key(seed)

    def reference_model(self, env: Environment) -> nn.Module:
        """The independent model of `env`'s seed (see Environment), trained once and cached."""
        return self.runner.reference_model(env)

    def run_pipeline(self, pipeline: Pipeline) -> PipelineResult:
        """Apply pre-training defenses, train (or load) the model, prepare post-training steps."""
        return self.runner.run_pipeline(pipeline)

    def measure(self, result: PipelineResult, defense: Defense | None) -> dict[str, float]:
        """A defense's metrics (or clean accuracy when `defense` is None) on a pipeline's model."""
        return self.runner.measure(result, defense)

    def probe(self, result: PipelineResult) -> dict[str, float]:
        """The factor probes (defcon.engine.probes) of a pipeline's model, cached like a measurement."""
        return self.runner.probe(result)

    def training_facts(self, result: PipelineResult) -> dict[str, float]:
        """Facts the training recorded (convergence, ε, …), from the cache when possible."""
        return self.runner.training_facts(result)

    # ------------------------------------------------------------------ measuring

    def compose(
        self,
        names: Sequence[str],
        *,
        seeds: int | None = None,
        max_seeds: int | None = None,
        seed_start: int | None = None,
        force: bool = False,
        tolerances: Mapping[str, float] | None = None,
        save_model: Path | str | None = None,
        order: Literal["checker", "given"] = "checker",
    ) -> CompositionRecord:
        """Measure a combination: no defense, each defense alone, combined, under one scenario.

        Starts with `seeds` seeds (seed_start, seed_start + 1, …) and, while a verdict is
        inconclusive, adds seeds up to the next look (`defcon.effectiveness.looks`: doubling, up to
        `max_seeds`; default `seeds`, i.e. no extra seeds), each look at the per-look confidence
        that keeps the whole measurement's error rate (`look_confidences`).
        A value not given is the run settings' (`from_settings`; else 3 seeds from seed 0).
        `save_model`: an empty folder to save the combined model of the first seed in, as served
        (`defcon.measure.artefact`; `defcon.load_pipeline` reads it). `order`: the checker's order
        within each stage, or the order of `names` (`defcon.planning.orders`; measured even where the
        checker would order them otherwise, which the log says).
        """
        from defcon.measure.artefact import check_target, save_pipeline

        plan = self.seed_plan(seeds, max_seeds, seed_start)
        if save_model is not None:
            check_target(save_model)  # before any training
        with quiet_libraries(), self.membership_regime(self.measures_membership(names)):
            record = self._compose(
                names,
                seeds=plan.seeds,
                max_seeds=plan.most_seeds,
                seed_start=plan.seed_start,
                force=force,
                tolerances=tolerances,
                order_choice=order,
            )
            if save_model is not None:
                save_pipeline(self, record, save_model)  # in the regime the model was trained in
            return record

    def measures_membership(self, names: Sequence[str]) -> bool:
        """Whether a defense of `names` declares a membership metric (dp_sgd does)."""
        return any(
            metric.name in MEMBERSHIP_METRICS
            for name in names
            if name in self.catalog
            for metric in self.catalog[name].metrics
        )

    @contextmanager
    def membership_regime(self, active: bool = True) -> Iterator[None]:
        """Every arm (no defense included) trains in the profile's membership regime for the
        dataset while inside, so the undefended model leaks and arms stay comparable; the
        regime's profile enters every cache key, so no other run's models are reused."""
        saved = self.runner.profile
        if active:
            self.runner.profile = saved.membership_regime(self.dataset_name)
        try:
            yield
        finally:
            self.runner.profile = saved

    def _judge(
        self,
        specs: Sequence[DefenseSpec],
        arms: ArmComparison,
        tolerances: Mapping[str, float],
        confidence: float,
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
                    confidence,
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
        order_choice: Literal["checker", "given"] = "checker",
    ) -> CompositionRecord:
        started = time.perf_counter()
        before = dict(self.cache.seconds)
        check_order_choice(order_choice, MEASURED_ORDERS, "order")
        planned = self._plan(names, force=force)
        specs = list(planned.specs)
        tolerances = validate_tolerances(tolerances, specs)
        order = planned.order
        if order_choice == "given":
            order = given_order({spec.name: spec for spec in specs}, names)
            if order != planned.order:
                self.log(f"the given order {' → '.join(order)}; the checker's would be "
                         f"{' → '.join(planned.order)}")  # fmt: skip
        ordered_specs = tuple(sorted(specs, key=lambda spec: order.index(spec.name)))
        if not planned.verdict.effective:  # measured anyway (--force): say what would not conflict
            from defcon.planning.planner import advice

            self.log(advice(specs, self.catalog, list(planned.alternatives)))
        arms = ArmComparison(
            self, order, poisoned=planned.scenario.poisoned,
            readings=(
                Reading(PROBES, lambda arm, result: self.probe(result)),
                Reading(FACTS, lambda arm, result: self.training_facts(result)),
                Reading(ACTED, ChangedPredictions(self.runner)),
            ),
        )  # fmt: skip
        judged: list[tuple[DefenseSpec, tuple[MetricVerdict, ...]]] = []

        def add_seed(seed: int) -> None:
            done = len(arms.seeds)
            self.log(
                f"seed {done + 1}/{seeds if done < seeds else max_seeds}: "
                f"{' → '.join(order)} on {self.dataset_name}"
            )
            arms.add_seed(seed)

        def decided(count: int, confidence: float) -> bool:
            judged[:] = self._judge(ordered_specs, arms, tolerances, confidence)
            undecided = [
                f"{v.defense}.{v.metric}"
                for _, verdicts in judged
                for v in verdicts
                if v.judged and not v.conclusive
            ]
            if undecided and count < max_seeds:
                upcoming = next(n for n in looks(seeds, max_seeds) if n > count)
                self.log(f"inconclusive after {count} seeds ({', '.join(undecided)}): adding "
                         f"seeds up to the next look ({upcoming})")  # fmt: skip
            return not undecided

        read_at_looks(add_seed, decided, seeds=seeds, max_seeds=max_seeds, seed_start=seed_start)
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
        predicted, abstained = predictions(specs, self.catalog, self.dataset(seed_start).kind)
        notes = degenerate_models(
            self.dataset(seed_start),
            {COMBINED: arms.clean[COMBINED], **{f"{n} alone": arms.clean[n] for n in order}},
        )
        first = self.dataset(seed_start)
        test_counts = first.test.y.bincount()
        undefended_facts = arms.series(NO_DEFENSE, FACTS)
        unreliable = underfit_reasons(
            undefended_facts, arms.clean[NO_DEFENSE],
            float(test_counts.max()) / float(test_counts.sum()), len(first.val),
            early_stopping=self.fitted,
        )  # fmt: skip
        spent = {
            label: round(value - before.get(label, 0.0), 2)
            for label, value in self.cache.seconds.items()
            if value - before.get(label, 0.0) > 0
        }
        return CompositionRecord(
            defenses=tuple(names),
            order=order,
            order_choice=order_choice,
            dataset=self.dataset_name,
            profile=self.profile.name,
            seeds=tuple(arms.seeds),
            seed_start=seed_start,
            max_seeds=max_seeds,
            scenario=planned.scenario.names(),
            results=results,
            clean_accuracy_no_defense=Summary.of(arms.clean[NO_DEFENSE]),
            clean_accuracy_combined=Summary.of(arms.clean[COMBINED]),
            factor_probes=probe_summaries(arms, [NO_DEFENSE, COMBINED, *order]),
            label=combination_label([r.outcome for r in results]),
            predicted=predicted,
            abstained=abstained,
            forced=force,
            tolerances=tolerances,
            configs={name: dict(cfg) for name, cfg in self.configs.items() if name in order},
            threads=torch.get_num_threads(),
            device=str(self.device),
            model=self.model_factory,
            dataset_sha256=self.source.digest if isinstance(self.source, UserData) else None,
            code=f"{self._code(order)}+{rule_code()}",
            versions=versions(),
            wall_time_s=round(time.perf_counter() - started, 2),
            cache=self.cache.stats(),
            seconds=spent,
            warnings=notes,
            unreliable=unreliable,
            training={**training_used(self.profile, self.dataset_name), **self.fitted},
            undefended_facts=summaries_over_seeds(undefended_facts),
            defended_facts={
                label: facts
                for label in [*order, COMBINED]
                if (facts := summaries_over_seeds(arms.series(label, FACTS)))
            },
            alternatives=planned.alternatives,
            notices=data_and_model_notices(self.runner, order, seed_start)
            + acted_notices(arms, order),
        )


def summaries_over_seeds(per_seed: Sequence[Mapping[str, float]]) -> dict[str, Summary]:
    """Key → mean ± std over seeds, for the keys every seed reported (a fact, a probe)."""
    if not per_seed:
        return {}
    shared = set.intersection(*(set(reading) for reading in per_seed))
    return {key: Summary.of([reading[key] for reading in per_seed]) for key in sorted(shared)}


def probe_summaries(arms: ArmComparison, labels: Sequence[str]) -> dict[str, dict[str, Summary]]:
    """Arm → factor probe → mean ± std over seeds (probes every seed of the arm reported)."""
    return {
        label: summaries_over_seeds(readings)
        for label in labels
        if (readings := arms.series(label, PROBES))
    }
