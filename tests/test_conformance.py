"""Every defense of the catalog honours the stage contract (defcon/defense.py).

Parametrised over the installed catalog, so a new defense is covered by adding its module and
spec: its class resolves from the spec; stage and slots agree with the hooks it overrides;
`apply` (or training with it) leaves its input untouched and is deterministic for a seed;
`measure` returns exactly the declared metrics, the same twice.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import pytest
import torch

from defcon.catalog import builtin_catalog
from defcon.defense import (
    Environment,
    InTrainingDefense,
    PostTrainingDefense,
    PreTrainingDefense,
    contract_problems,
)
from defcon.models import predict
from defcon.registry import defense_class, make_defense
from defcon.training import supply_reference_models, train
from defcon.vocabulary import DataKind, DefenseSpec, Stage

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
