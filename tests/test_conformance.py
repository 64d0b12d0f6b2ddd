"""Every defense of the catalog honours the stage contract (defcon/engine/defense.py); every risk
attack and every technique honours its own.

Parametrised over the installed catalog, so a new defense is covered by adding its module and
spec: its class resolves from the spec; stage and slots agree with the hooks it overrides;
`apply` (or training with it) leaves its input untouched and is deterministic for a seed;
`measure` returns exactly the declared metrics, the same twice. Parametrised over the registered
risk attacks and techniques (a plug-in's too): an attack declares directed, sized metrics and
returns exactly them; a technique gives a Verdict on every pair of the built-in catalog.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
from typing import Any, get_args

import pytest
import torch

from defcon.catalog import builtin_catalog
from defcon.checker import Verdict, get_technique, techniques
from defcon.checker.verdict import Label
from defcon.engine.attacks import BadNets
from defcon.engine.defense import (
    Environment,
    InTrainingDefense,
    PostTrainingDefense,
    PreTrainingDefense,
    contract_problems,
)
from defcon.engine.models import predict
from defcon.engine.registry import defense_class, make_defense
from defcon.engine.training import supply_reference_models, train
from defcon.risks import AttackConfig, RiskAttack, risk_attacks
from defcon.vocabulary import DataKind, DefenseSpec, Risk, Stage

pytestmark = pytest.mark.filterwarnings("ignore")
RUNNABLE = [spec for spec in builtin_catalog().values() if spec.implementation is not None]


def _dataset_for(spec: DefenseSpec) -> str:
    """The cheapest dataset the defense applies to: digits, else compas (tabular, with groups)."""
    if DataKind.IMAGE in spec.data_kinds and not spec.needs_sensitive_attribute:
        return "digits"
    return "compas"


@functools.lru_cache(maxsize=4)
def _base(dataset: str) -> tuple[Environment, torch.nn.Module]:
    """A tiny environment with its independent model trained once, and a plain model."""
    from conftest import _environment

    env = supply_reference_models(dataclasses.replace(_environment(dataset, 0, "tiny"), record={}))
    env.independent_model()  # trained once; copies of the environment share it
    return env, train(env, env.dataset.train, epochs=2).model


def _env(dataset: str) -> Environment:
    env, _ = _base(dataset)
    return dataclasses.replace(env, record={})


def _same_split(a, b) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in ((a.x, b.x), (a.y, b.y), (a.s, b.s), (a.origin, b.origin))
    )


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


@pytest.mark.parametrize("spec", RUNNABLE, ids=lambda s: s.name)
def test_class_resolves_and_matches_its_spec(spec: DefenseSpec):
    cls = defense_class(spec.name)
    assert contract_problems(cls, spec) == []
    defense = make_defense(spec.name)
    assert defense.spec == spec and defense.name == spec.name
    assert type(defense)(spec=spec).cache_key() == defense.cache_key()


@pytest.mark.parametrize("spec", RUNNABLE, ids=lambda s: s.name)
def test_apply_keeps_its_input_is_deterministic_and_measure_is_as_declared(spec: DefenseSpec):
    dataset = _dataset_for(spec)
    env = _env(dataset)
    base = _base(dataset)[1]
    defense = make_defense(spec.name)
    if spec.stage is Stage.PRE:
        assert isinstance(defense, PreTrainingDefense)
        split = env.dataset.train
        before = dataclasses.replace(split)  # same tensors: compared by value below
        snapshot = [t.clone() if t is not None else None for t in (split.x, split.y, split.s)]
        first, second = defense.apply(split, env), defense.apply(split, _env(dataset))
        assert all(
            (a is None and b is None) or torch.equal(a, b)
            for a, b in zip(snapshot, (before.x, before.y, before.s), strict=True)
        )
        assert _same_split(first, second)
        model = base
    elif spec.stage is Stage.IN:
        assert isinstance(defense, InTrainingDefense)
        split = env.dataset.train
        snapshot = (split.x.clone(), split.y.clone())
        trained = train(env, split, [defense], epochs=1)
        again = train(_env(dataset), split, [make_defense(spec.name)], epochs=1)
        assert torch.equal(split.x, snapshot[0]) and torch.equal(split.y, snapshot[1])
        assert _same_state(_state(trained.model), _state(again.model))
        env.record.update(trained.record)
        model = trained.model
    else:
        assert isinstance(defense, PostTrainingDefense)
        original = _state(base)
        kept = copy.deepcopy(base)
        model = defense.apply(base, env)
        again = defense.apply(kept, _env(dataset))
        assert _same_state(_state(base), original)
        test_x = env.dataset.test.x
        assert torch.equal(predict(model, test_x), predict(again, test_x))
    metrics = defense.measure(model, env)
    assert set(metrics) == {m.name for m in spec.metrics}
    assert all(isinstance(v, float) for v in metrics.values())
    assert _same_metrics(metrics, defense.measure(model, env))


# --------------------------------------------------------------------------- risk attacks
# One config generates the tests of every registered risk attack (defcon's own and an installed
# package's, `defcon.risks`): the cheap settings each runs with here (an attack not listed runs
# with its defaults). Each runs on digits, or on compas (tabular, with groups) where it refuses
# digits; a poisoner's attack on a model trained under BadNets.
RISK_SETTINGS: dict[Risk, dict[str, Any]] = {
    Risk.EVASION: {"samples": 64},
    Risk.MODEL_THEFT: {"max_epochs": 2},
    Risk.MEMBERSHIP_INFERENCE: {"samples": 100},
    Risk.ATTRIBUTE_INFERENCE: {"samples": 100},
    Risk.DISTRIBUTION_INFERENCE: {"victims": 2, "shadows": 2, "size": 100, "steps": 5},
    Risk.DATA_RECONSTRUCTION: {"steps": 5},
}
ATTACKS = list(risk_attacks().values())


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.risk.value)
def test_attack_declares_directed_sized_metrics(attack: type[RiskAttack]):
    names = [m.name for m in attack.metrics]
    assert len(names) == len(set(names)) > 0
    assert sum(m.primary for m in attack.metrics) == 1
    assert attack().primary.riskier is not None  # the risk's arrow needs a direction
    for metric in attack.metrics:  # a direction without a practical size calls noise a change
        assert (metric.riskier is None) == (metric.min_effect is None), metric.name
    assert attack.reference.strip()
    configured = attack(RISK_SETTINGS.get(attack.risk, {}))
    assert isinstance(configured.config, AttackConfig)
    json.dumps(configured.cache_key(), sort_keys=True)  # part of every measurement's cache key


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.risk.value)
def test_attack_returns_exactly_its_declared_metrics(attack: type[RiskAttack]):
    configured = attack(RISK_SETTINGS.get(attack.risk, {}))
    dataset = "digits" if configured.refusal(_env("digits").dataset) is None else "compas"
    env = _env(dataset)
    assert configured.refusal(env.dataset) is None
    if attack.poisoned:
        env.poisoner = BadNets.for_dataset(env.dataset, 0)
        env.train_data, _ = env.poisoner.poison(env.dataset.train, 0)
        model = train(env, env.train_data, epochs=2).model
    else:
        env.train_data = env.dataset.train
        model = _base(dataset)[1]
    values = configured.run(model, env)
    declared = {m.name: m for m in configured.metrics_for(env.dataset)}
    assert set(values) == set(declared)
    assert set(declared) | set(configured.unreported(env.dataset)) <= {
        m.name for m in attack.metrics
    }
    for name, value in values.items():
        assert isinstance(value, float), name
        assert not math.isnan(value) or declared[name].undefined, f"{name} is NaN undeclared"


# --------------------------------------------------------------------------- techniques
# Every registered technique (defcon's own and an installed package's, `defcon.techniques`) on
# every pair of the built-in catalog: a Verdict of the vocabulary's labels, about that pair.
PAIRS = list(itertools.combinations(sorted(builtin_catalog()), 2))


@pytest.mark.parametrize("name", list(techniques()))
def test_technique_gives_a_verdict_on_every_pair_of_the_catalog(name: str):
    technique = get_technique(name)
    catalog = builtin_catalog()
    assert PAIRS and technique.name == name and technique.summary.strip()
    for pair in PAIRS:
        verdict = technique.check(catalog.resolve(pair))
        assert isinstance(verdict, Verdict), pair
        assert verdict.label in get_args(Label), pair
        assert verdict.technique == name and verdict.defenses == pair, pair
        assert sorted(verdict.order) == list(pair) and verdict.explanation, pair
