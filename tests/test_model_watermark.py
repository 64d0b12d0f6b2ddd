"""model_watermark: a model trained on the watermarked data maps triggered held-out inputs to the
secret class; an independent model trained on clean data does not. apply never mutates its
input and every secret is re-derived from (config, seed, dataset)."""

from __future__ import annotations

import copy

import pytest
import torch

from defcon.engine.attacks import BadNets, make_trigger
from defcon.engine.models import accuracy, build_model
from defcon.engine.registry import make_defense
from defcon.engine.training import train
from pipeline_stages.pre_training.model_watermark import ModelWatermark


@pytest.fixture(scope="module")
def digits_runs(make_env):
    env = make_env()
    defense = ModelWatermark()
    independent = train(env, env.dataset.train)
    marked_data = defense.apply(env.dataset.train, env)
    marked = train(env, marked_data)
    return env, independent, marked, defense


def test_registry_builds_it() -> None:
    assert isinstance(make_defense("model_watermark"), ModelWatermark)


def test_watermark_is_learnt_and_absent_from_an_independent_model(digits_runs) -> None:
    env, independent, marked, defense = digits_runs
    assert defense.measure(marked.model, env)["watermark_accuracy"] > 0.8
    assert defense.measure(independent.model, env)["watermark_accuracy"] < 0.15
    test = env.dataset.test
    assert (
        accuracy(marked.model, test.x, test.y) > accuracy(independent.model, test.x, test.y) - 0.05
    )


def test_apply_appends_stamped_relabelled_copies_without_mutating(make_env) -> None:
    env = make_env()
    train_split = env.dataset.train
    x0, y0 = train_split.x.clone(), train_split.y.clone()
    defense = ModelWatermark({"fraction": 0.1})
    out = defense.apply(train_split, env)
    assert torch.equal(train_split.x, x0) and torch.equal(train_split.y, y0)
    n, extra = len(train_split), round(0.1 * len(train_split))
    assert len(out) == n + extra
    assert torch.equal(out.x[:n], x0) and torch.equal(out.y[:n], y0)
    target = defense.target_class(env)
    assert (out.y[n:] == target).all()
    assert torch.equal(defense.trigger(env).stamp(out.x[n:]), out.x[n:])  # all stamped
    again = ModelWatermark({"fraction": 0.1}).apply(train_split, env)
    assert torch.equal(again.x, out.x) and torch.equal(again.y, out.y)


def test_secret_differs_from_the_poisoner(make_env) -> None:
    env = make_env()
    defense = ModelWatermark()
    badnets = BadNets.for_dataset(env.dataset, env.seed)
    assert defense.target_class(env) != badnets.target_class
    assert not set(defense.trigger(env).positions) & set(badnets.trigger.positions)
    assert defense.trigger(env) == make_trigger(
        env.dataset,
        env.seed,
        "model_watermark",
        target_class=defense.target_class(env),
        corner="top_left",
    )


def test_measure_on_a_fresh_instance_after_reload(digits_runs) -> None:
    env, _, marked, defense = digits_runs
    reloaded = build_model(marked.arch, seed=7)
    reloaded.load_state_dict(copy.deepcopy(marked.model.state_dict()))
    assert ModelWatermark().measure(reloaded, env) == defense.measure(marked.model, env)


def test_tabular_watermark(make_env) -> None:
    env = make_env("adult")
    defense = ModelWatermark()
    # Two classes: the target is the minority class, so a clean model is not "watermarked".
    counts = torch.bincount(env.dataset.train.y, minlength=2)
    assert defense.target_class(env) == int(counts.argmin())
    marked = train(env, defense.apply(env.dataset.train, env))
    independent = train(env, env.dataset.train)
    assert defense.measure(marked.model, env)["watermark_accuracy"] > 0.8
    assert defense.measure(independent.model, env)["watermark_accuracy"] < 0.3
