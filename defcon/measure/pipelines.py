"""Running pipelines: the one place a composition's models and measurements come from.

A `Pipeline` is one model's recipe (seed, scenario, the ordered defenses of each stage). The
`PipelineRunner` builds its `Environment`, applies the pre-training defenses, trains the model
(or loads it from the content-addressed cache), applies the post-training defenses, and
measures it through the cache. Every cache key is built here, from one base key (code, data,
seed, profile, threads, device), so keys cannot drift apart between `compose`, the standalone
benchmarks and `audit`; results are frozen, and the model is built only when a measurement is
not cached.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defcon.catalog import Catalog
from defcon.engine.attacks import BadNets
from defcon.engine.canaries import plant_canaries
from defcon.engine.data import Dataset, Split, UserData, load_dataset
from defcon.engine.defense import (
    Defense,
    Environment,
    InTrainingDefense,
    PostTrainingDefense,
    PreTrainingDefense,
)
from defcon.engine.devices import place
from defcon.engine.fingerprint import code_of, core_code, probes_code
from defcon.engine.models import (
    ArchConfig,
    InputLayer,
    accuracy,
    arch_for,
    build_model,
    model_label,
    nonfinite_logits,
)
from defcon.engine.probes import probe_factors
from defcon.engine.registry import make_defense
from defcon.engine.seeds import derived_seed
from defcon.engine.training import TrainedModel, train, train_reference
from defcon.errors import DefconError
from defcon.measure.cache import ModelCache
from defcon.planning.dataset_info import reads_data_dir
from defcon.planning.profiles import Profile
from defcon.user_code import UserCodeError, defense_call, describe
from defcon.vocabulary import Stage

CLEAN_ACCURACY = "clean_accuracy"
NO_DEFENSE = "no defense"


@dataclass(frozen=True)
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


@dataclass(frozen=True, eq=False)
class PipelineResult:
    """A pipeline's final model, built lazily (not needed when every measurement is cached).

    `model_key` and `post_keys` are the cache descriptions of the trained model and of the
    post-training steps; every measurement of this model is keyed by them.
    """

    env: Environment
    build: Callable[[], nn.Module]
    model_key: dict[str, Any]
    post_keys: tuple[dict[str, Any], ...] = ()

    @cached_property
    def _built(self) -> nn.Module:
        return self.build()

    @property
    def model(self) -> nn.Module:
        """A copy of the pipeline's final model for each reader. A reading that runs the model in
        training mode (as AutoAttack's tabular wrapper did) updates BatchNorm's running statistics
        in place; with
        one shared object every later reading would measure a model the pipeline does not serve,
        and the cached values would depend on the order the readings ran in."""
        return copy.deepcopy(self._built)


class PipelineRunner:
    """Builds, trains and measures pipelines on one data source, profile, device and cache."""

    def __init__(
        self,
        source: str | UserData,
        *,
        profile: Profile,
        cache: ModelCache,
        device: torch.device,
        catalog: Catalog,
        configs: Mapping[str, Mapping[str, Any]],
        data_dir: Path | str | None = None,
        model_factory: str | None = None,
        log: Callable[[str], None] = lambda message: None,
        datasets: Callable[[int], Dataset] | None = None,
        key_extra: Mapping[str, Any] | None = None,
    ) -> None:
        """`datasets` replaces loading `source` (a derived runner's own rows); `key_extra` enters
        every model key of this runner (what distinguishes its models from the source's)."""
        self.source = source
        self.dataset_name = source.name if isinstance(source, UserData) else source
        self.profile = profile
        self.cache = cache
        self.device = device
        self.catalog = catalog
        self.configs = configs
        self.data_dir = data_dir
        self.model_factory = model_factory
        self.log = log
        self._load = datasets
        self.key_extra = dict(key_extra or {})
        self._datasets: dict[tuple[int, int | None, int | None], Dataset] = {}

    def dataset(self, seed: int) -> Dataset:
        """The dataset with `seed`'s splits, loaded once (capped by the profile)."""
        caps = (self.profile.train_cap(self.dataset_name), self.profile.eval_cap(self.dataset_name))
        key = (seed, *caps)  # the profile may change (a membership regime, early stopping)
        if key not in self._datasets:
            self._datasets[key] = (
                self._load(seed)
                if self._load is not None
                else load_dataset(
                    self.source,
                    seed=seed,
                    max_train=caps[0],
                    max_eval=caps[1],
                    data_dir=self.data_dir,
                )  # fmt: skip
            )
        return self._datasets[key]

    def defense(self, name: str) -> Defense:
        """A fresh instance of `name` with this runner's settings for it."""
        return make_defense(name, self.configs.get(name), self.catalog)

    def arch(self, dataset: Dataset) -> ArchConfig:
        """The victim's architecture: the user's factory, or defcon's default for the data."""
        return arch_for(dataset, width=self.profile.width, factory=self.model_factory)

    def model_problem(self, defense: Defense, dataset: Dataset) -> str | None:
        """Why `defense` cannot handle the model this runner trains (before any training)."""
        arch = self.arch(dataset)
        if isinstance(defense, InTrainingDefense):
            arch = defense_call(defense, "adapt_arch", arch, returns=ArchConfig)
        model = place(build_model(arch, seed=0), self.device)
        return defense_call(
            defense,
            "model_problem",
            model,
            dataset,
            returns=(str, type(None)),
            expected="str or None",
        )

    def pipeline(self, names: Sequence[str], seed: int, poisoned: bool) -> Pipeline:
        """The recipe applying `names` (in this order within each stage) on `seed`."""
        defenses = [self.defense(name) for name in names]
        return Pipeline(
            seed=seed,
            poisoned=poisoned,
            pre=tuple(d for d in defenses if d.spec.stage is Stage.PRE),
            during=tuple(d for d in defenses if d.spec.stage is Stage.IN),
            post=tuple(d for d in defenses if d.spec.stage is Stage.POST),
        )

    # ------------------------------------------------------------------ cache keys

    def base_key(self, seed: int) -> dict[str, Any]:
        """What every model of this runner and seed depends on (code, data, profile, threads,
        device; the victim's architecture, a user's factory included, is in the model key)."""
        return {
            "code": core_code(),
            "dataset": self.source.describe()
            if isinstance(self.source, UserData)
            else self.dataset_name,
            # the folder only matters where the loader reads it; resolved, so ./x == /abs/x
            "data_dir": str(Path(self.data_dir).resolve())
            if self.data_dir and reads_data_dir(self.dataset_name)
            else None,
            "seed": seed,
            "profile": self.profile.model_dump(mode="json"),
            "threads": torch.get_num_threads(),
            "device": str(self.device),
            **self.key_extra,
        }

    def measurement(
        self,
        result: PipelineResult,
        what: Mapping[str, Any],
        compute: Callable[[], dict[str, float]],
        label: str,
    ) -> dict[str, float]:
        """A reading of `result`'s model, cached under its model and post-training keys plus
        `what` (which measurement, with its settings and the hash of its code)."""
        description = {"model": result.model_key, "post": list(result.post_keys), **what}
        return self.cache.measurement(description, compute, label=label)

    # ------------------------------------------------------------------ models

    def reference_model(self, env: Environment) -> nn.Module:
        """The independent model of `env`'s seed (see Environment), trained once and cached."""
        key = {**self.base_key(env.seed), "reference": "plain recipe on attacker_data"}

        def train_it() -> TrainedModel:
            self.log(f"seed {env.seed}: training the independent reference model")
            return train_reference(env)

        return place(self.cache.model(key, train_it, label="reference model").model, self.device)

    def population_model(self, env: Environment, index: int) -> nn.Module:
        """RMIA's `index`-th reference model of `env`'s seed, trained once and cached."""
        key = {**self.base_key(env.seed), "population_model": index,
               "reference": "plain recipe on a seeded half of attacker_data"}  # fmt: skip

        def train_it() -> TrainedModel:
            self.log(f"seed {env.seed}: training RMIA reference model {index}")
            return train_reference(env, index)

        return place(self.cache.model(key, train_it, label="RMIA reference models").model,
                     self.device)  # fmt: skip

    def shadow_model(
        self, seed: int, dataset: Dataset, split: Split, tag: str, epochs: int
    ) -> nn.Module:
        """A shadow model an attacker trains (risk attacks): the plain recipe, the dataset's
        default architecture and no defense, on `split`; cached under this seed's base key."""
        digest = hashlib.sha256(split.x.numpy().tobytes() + split.y.numpy().tobytes())
        key = {**self.base_key(seed), "shadow": tag, "epochs": epochs,
               "data": digest.hexdigest()[:16]}  # fmt: skip

        def fit() -> TrainedModel:
            arch = arch_for(dataset, width=self.profile.width)
            env = Environment(
                dataset=dataset, seed=derived_seed(seed, tag), profile=self.profile, arch=arch,
            )  # fmt: skip
            return train(env, split, arch=arch, epochs=epochs, description=tag)

        return self.cache.model(key, fit, label="shadow models").model

    def on_rows(self, rows: np.ndarray, tag: str, epochs: int) -> PipelineRunner:
        """This runner's recipe on chosen rows of the clean training split (distribution games).

        Shares the cache; the rows (and more epochs, so a small set is trained for about as many
        steps as the attack asks) enter every model key.
        """
        rows_key = {"tag": tag, "rows": hashlib.sha256(rows.tobytes()).hexdigest()[:16]}
        name = self.dataset_name
        profile = self.profile.model_copy(update={"epochs": {**self.profile.epochs, name: epochs}})

        def dataset(seed: int) -> Dataset:
            full = self.dataset(seed)
            return full.with_train(full.train.subset(rows).with_(origin=None))

        return PipelineRunner(
            self.source, profile=profile, cache=self.cache, device=self.device,
            catalog=self.catalog, configs=self.configs, data_dir=self.data_dir,
            model_factory=self.model_factory, log=self.log, datasets=dataset,
            key_extra={**self.key_extra, "victim_rows": rows_key},
        )  # fmt: skip

    def run_pipeline(self, pipeline: Pipeline) -> PipelineResult:
        """Apply pre-training defenses, prepare training (or loading) and post-training steps."""
        dataset = self.dataset(pipeline.seed)
        poisoner = BadNets.for_dataset(dataset, pipeline.seed) if pipeline.poisoned else None
        arch = self.arch(dataset)
        env = Environment(
            dataset=dataset, seed=pipeline.seed, profile=self.profile, poisoner=poisoner,
            arch=arch, deployed=pipeline.names, device=self.device,
        )  # fmt: skip
        env.reference_model = lambda: self.reference_model(env)
        env.population_model = lambda index: self.population_model(env, index)
        train_split = dataset.train
        if poisoner is not None:
            train_split, _ = poisoner.poison(train_split, pipeline.seed)
        if self.profile.canaries:  # the membership auditor's, in every arm alike
            train_split, env.canaries = plant_canaries(
                train_split, self.profile.canaries, dataset.num_classes, pipeline.seed,
                reserve=dataset.reserve,
            )  # fmt: skip
        front: InputLayer | None = None  # the pre-training defenses' transform of every input
        for defense in pipeline.pre:
            train_split = defense_call(defense, "apply", train_split, env, returns=Split)
            seen = train_split if front is None else _through(front, train_split)
            layer = defense_call(
                defense, "input_layer", seen, env, returns=(InputLayer, type(None)),
                expected="an InputLayer or None",
            )  # fmt: skip
            if layer is not None:
                front = layer if front is None else front.then(layer)
        env.train_data = train_split
        model_key = {
            **self.base_key(pipeline.seed),
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
                    f"applying {defense.name}",
                    lambda d=defense, m=model: defense_call(d, "apply", m, env, returns=nn.Module),
                )
            return model

        return PipelineResult(env, build, model_key, tuple(_keyed(d) for d in pipeline.post))

    # ------------------------------------------------------------------ measurements

    def measure(self, result: PipelineResult, defense: Defense | None) -> dict[str, float]:
        """A defense's metrics (or clean accuracy when `defense` is None) on a pipeline's model."""
        what = _keyed(defense) if defense is not None else CLEAN_ACCURACY

        def compute() -> dict[str, float]:
            model = result.model  # builds (and fills env.record) on first use
            if defense is None:
                test = result.env.dataset.test
                if nonfinite_logits(model, test.x):
                    post = ", ".join(str(k["name"]) for k in result.post_keys)
                    arch = result.env.arch
                    raise DefconError(
                        f"the model ({model_label(arch) if arch else 'trained'})"
                        + (f" after {post}" if post else "")
                        + " gives non-finite logits (NaN or inf) on the test rows, so its "
                        "accuracy would mean nothing"
                    )
                return {CLEAN_ACCURACY: accuracy(model, test.x, test.y)}
            metrics = defense_call(
                defense, "measure", model, result.env, returns=dict, expected="a dict of floats"
            )
            declared = {m.name for m in defense.spec.metrics}
            if set(metrics) != declared:
                raise UserCodeError(
                    f"defense '{defense.name}': measure returned metrics {sorted(metrics)} but its "
                    f"spec declares {sorted(declared)}; make them agree (or declare metric_names "
                    "on the class, checked when it is loaded)"
                )
            try:
                return {name: float(value) for name, value in metrics.items()}
            except (TypeError, ValueError) as error:
                raise UserCodeError(
                    f"defense '{defense.name}': measure returned a value that is not a number "
                    f"({describe(error)})"
                ) from error

        label = f"measuring {defense.name}" if defense is not None else "clean accuracy"
        return self.measurement(result, {"measure": what}, compute, label)

    def probe(self, result: PipelineResult) -> dict[str, float]:
        """The factor probes (defcon.engine.probes) of a pipeline's model, cached like a measurement."""
        return self.measurement(
            result, {"probes": probes_code()}, lambda: probe_factors(result.model, result.env),
            "probing factors",
        )  # fmt: skip

    def training_facts(self, result: PipelineResult) -> dict[str, float]:
        """Facts the training recorded (convergence, ε, …), from the cache when possible."""
        if not result.env.record:
            _ = result._built  # building fills the record; no reader needs a copy here
        return dict(result.env.record)


@torch.no_grad()
def _through(layer: InputLayer, split: Split) -> Split:
    """The split as the model sees it behind `layer` (what a later input layer is fitted on)."""
    return split.with_(x=layer(split.x))


def _keyed(defense: Defense) -> dict[str, Any]:
    """A defense's cache key plus the hash of the code behind it."""
    return {**defense.cache_key(), "code": code_of(type(defense))}
