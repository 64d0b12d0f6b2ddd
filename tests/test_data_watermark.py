"""data_watermark: the paired t-test (α = 0.05) claims ownership of a model trained on the
watermarked data in nearly every trial and never accuses an independent model, nor one carrying
a different backdoor. apply never mutates its input; secrets are re-derived from the seed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from defcon.engine.attacks import BadNets
from defcon.engine.models import accuracy, build_model
from defcon.engine.registry import make_defense
from defcon.engine.training import train
from pipeline_stages.pre_training.data_watermark import DataWatermark


@pytest.fixture(scope="module")
def digits_runs(make_env):
    env = make_env()
    defense = DataWatermark()
    independent = train(env, env.dataset.train)
    marked = train(env, defense.apply(env.dataset.train, env))
    return env, independent, marked, defense


def test_registry_builds_it() -> None:
    assert isinstance(make_defense("data_watermark"), DataWatermark)


def test_ownership_is_detected_and_independent_model_not_accused(digits_runs) -> None:
    env, independent, marked, defense = digits_runs
    assert defense.measure(marked.model, env)["detection_rate"] >= 0.9
    assert defense.measure(independent.model, env)["detection_rate"] <= 0.05
    p_independent = defense.p_values(independent.model, env)
    assert len(p_independent) == defense.config.trials
    assert float(np.median(p_independent)) > 0.5
    test = env.dataset.test
    assert (
        accuracy(marked.model, test.x, test.y) > accuracy(independent.model, test.x, test.y) - 0.05
    )


def test_a_different_backdoor_is_not_taken_for_the_watermark(make_env, digits_runs) -> None:
    env, _, _, defense = digits_runs
    badnets = BadNets.for_dataset(env.dataset, env.seed)
    poisoned, _ = badnets.poison(env.dataset.train, env.seed)
    backdoored = train(env, poisoned)
    assert badnets.attack_success_rate(backdoored.model, env.dataset.test) > 0.7
    assert defense.measure(backdoored.model, env)["detection_rate"] <= 0.05


def test_apply_replaces_a_seeded_share_without_mutating(make_env) -> None:
    env = make_env()
    split = env.dataset.train
    x0, y0 = split.x.clone(), split.y.clone()
    defense = DataWatermark()
    out = defense.apply(split, env)
    assert torch.equal(split.x, x0) and torch.equal(split.y, y0)
    assert len(out) == len(split)
    changed = (out.x != x0).flatten(1).any(1) | (out.y != y0)
    expected = round(defense.config.fraction * len(split))
    # every chosen input changes (none of them already carried the secret pattern)
    assert int(changed.sum()) == expected
    assert (out.y[changed] == defense.target_class(env)).all()
    assert (y0[changed] != defense.target_class(env)).all()
    again = DataWatermark().apply(split, env)
    assert torch.equal(again.x, out.x) and torch.equal(again.y, out.y)


def test_secret_differs_from_the_poisoner_and_model_watermark(make_env) -> None:
    from pipeline_stages.pre_training.model_watermark import ModelWatermark

    env = make_env()
    positions = set(DataWatermark().trigger(env).positions)
    assert not positions & set(BadNets.for_dataset(env.dataset, env.seed).trigger.positions)
    assert not positions & set(ModelWatermark().trigger(env).positions)
    assert DataWatermark().target_class(env) != BadNets.for_dataset(env.dataset, 0).target_class


def test_measure_on_a_fresh_instance_after_reload(digits_runs) -> None:
    env, _, marked, defense = digits_runs
    reloaded = build_model(marked.arch, seed=5)
    reloaded.load_state_dict(copy.deepcopy(marked.model.state_dict()))
    fresh = DataWatermark()
    assert fresh.measure(reloaded, env) == defense.measure(marked.model, env)
    assert np.array_equal(fresh.p_values(reloaded, env), defense.p_values(marked.model, env))


def test_tabular_watermark(make_env) -> None:
    env = make_env("adult")
    defense = DataWatermark()
    marked = train(env, defense.apply(env.dataset.train, env))
    independent = train(env, env.dataset.train)
    assert defense.measure(marked.model, env)["detection_rate"] >= 0.9
    assert defense.measure(independent.model, env)["detection_rate"] <= 0.05
