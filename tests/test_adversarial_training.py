"""Adversarial training (PGD, TRADES): robust accuracy rises vs no defense; invariants hold."""

from __future__ import annotations

import copy

import pytest
import torch

from defcon.engine.models import accuracy, arch_for, build_model
from defcon.engine.registry import make_defense as make
from defcon.engine.training import TrainingRun, train
from pipeline_stages.in_training.adversarial_training import AdversarialTraining


@pytest.fixture(scope="module")
def baseline(make_env):
    env = make_env()
    return env, train(env, env.dataset.train)


def test_registry_builds_it():
    defense = make("adversarial_training", {"eps": 0.2})
    assert isinstance(defense, AdversarialTraining) and defense.config.eps == 0.2


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_raises_robust_accuracy_vs_no_defense(baseline, method):
    env, plain = baseline
    defense = AdversarialTraining({"method": method, "eps": 0.1})
    trained = train(env, env.dataset.train, [defense])
    robust_plain = defense.measure(plain.model, env)["robust_accuracy"]
    robust = defense.measure(trained.model, env)["robust_accuracy"]
    assert robust >= robust_plain + 0.15, (robust_plain, robust)
    assert accuracy(trained.model, env.dataset.test.x, env.dataset.test.y) >= 0.85
    # Robust accuracy can never exceed clean accuracy on the same inputs.
    assert robust <= accuracy(trained.model, env.dataset.test.x, env.dataset.test.y) + 1e-9


def test_mixed_batch_replaces_a_share_by_adversarial_examples(make_env):
    env = make_env()
    model = build_model(arch_for(env.dataset, width=env.profile.width), env.seed)
    run = _run(env, model)
    x, y, s = env.dataset.train.tensors()
    x, y, s = x[:40], y[:40], s[:40]
    before = x.clone()
    defense = AdversarialTraining({"eps": 0.1, "adv_fraction": 0.25})
    x_new, y_new, s_new = defense.transform_batch(run, x, y, s)
    assert torch.equal(x, before)  # the input batch is not modified
    assert torch.equal(y_new, y) and torch.equal(s_new, s) and x_new.shape == x.shape
    changed = (x_new != x).flatten(1).any(1)
    assert changed[:10].all() and not changed[10:].any()
    assert float((x_new - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_new.min()) >= 0 and float(x_new.max()) <= 1


def test_default_radius_by_data_kind(make_env):
    defense = AdversarialTraining()
    assert defense.eps_for(make_env()) == 0.1
    assert defense.eps_for(make_env("adult")) == 0.05


def test_measure_is_reproducible_on_a_reloaded_model_and_a_fresh_instance(baseline):
    env, plain = baseline
    first = AdversarialTraining().measure(plain.model, env)
    reloaded = build_model(plain.arch, seed=123)
    reloaded.load_state_dict(copy.deepcopy(plain.model.state_dict()))
    assert AdversarialTraining().measure(reloaded, env) == first
    assert set(first) == {m.name for m in AdversarialTraining().spec.metrics}


def test_training_and_measuring_leave_inputs_untouched(make_env):
    env = make_env()
    split = env.dataset.train
    x, y = split.x.clone(), split.y.clone()
    trained = train(env, split, [AdversarialTraining({"method": "trades"})], epochs=1)
    assert torch.equal(split.x, x) and torch.equal(split.y, y)
    state = copy.deepcopy(trained.model.state_dict())
    trained.model.train()
    AdversarialTraining().measure(trained.model, env)
    assert trained.model.training  # mode restored
    for key, value in trained.model.state_dict().items():
        assert torch.equal(value, state[key]), key


def _run(env, model) -> TrainingRun:
    return TrainingRun(
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        loader=env.dataset.train.loader(64),
        env=env,
        train=env.dataset.train,
        epochs=1,
        lr=1e-3,
        batch_size=64,
    )
