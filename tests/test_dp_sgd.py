"""DP-SGD: a finite ε within its target, a plain model afterwards, less membership leakage."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from pydantic import ValidationError
from torch import nn

from defcon.models import arch_for, build_model
from defcon.training import TrainingRun, train
from pipeline_stages.in_training.dp_sgd import DPSGD, EPSILON_KEY, _best_threshold

OPACUS_ATTRIBUTES = ("grad_sample", "_forward_counter", "_current_grad_sample", "activations")


@pytest.fixture(scope="module")
def overfit(make_env):
    """A no-defense model and a DP-SGD model trained 60 epochs on 200 digits (members)."""
    env = make_env()
    members = env.dataset.train.subset(range(200))
    env = dataclasses.replace(env, train_data=members)
    plain = train(env, members, epochs=60)
    private = train(env, members, [DPSGD({"noise_multiplier": 2.0})], epochs=60)
    return env, plain, private


def test_epsilon_is_finite_and_within_the_target(make_env):
    env = make_env()
    defense = DPSGD({"target_epsilon": 3.0})
    trained = train(env, env.dataset.train, [defense], epochs=3)
    epsilon = trained.record[EPSILON_KEY]
    assert 0 < epsilon <= 3.0 + 1e-6
    assert trained.record["dp_sgd.delta"] == pytest.approx(1 / len(env.dataset.train))
    env.record.update(trained.record)
    metrics = DPSGD({"target_epsilon": 3.0}).measure(trained.model, env)
    assert set(metrics) == {m.name for m in defense.spec.metrics}
    assert metrics["epsilon"] == epsilon


def test_more_noise_spends_less_epsilon(make_env):
    env = make_env()
    low = train(env, env.dataset.train, [DPSGD({"noise_multiplier": 0.8})], epochs=1)
    high = train(env, env.dataset.train, [DPSGD({"noise_multiplier": 2.0})], epochs=1)
    assert high.record[EPSILON_KEY] < low.record[EPSILON_KEY] < math.inf


def test_training_hands_back_a_plain_model(overfit):
    _, _, private = overfit
    model = private.model
    assert type(model).__name__ == "SmallCNN" and private.arch.norm == "group"
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    ModuleValidator.validate(copy.deepcopy(model).train(), strict=True)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not any(hasattr(module, a) for a in OPACUS_ATTRIBUTES)
    for parameter in model.parameters():
        assert not any(hasattr(parameter, a) for a in OPACUS_ATTRIBUTES)


def test_wrap_fixes_batchnorm_and_unwrap_restores_everything(make_env):
    env = make_env()
    model = build_model(arch_for(env.dataset, width=env.profile.width), env.seed)
    optimizer = torch.optim.Adam(model.parameters())
    loader = env.dataset.train.loader(64)
    run = TrainingRun(model, optimizer, loader, env, env.dataset.train, 1, 1e-3, 64)
    defense = DPSGD()
    defense.wrap(run)
    assert isinstance(run.model, GradSampleModule) and isinstance(run.optimizer, DPOptimizer)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in run.plain_model.modules())
    assert {id(p) for p in run.plain_model.parameters()} == {
        id(p) for group in run.optimizer.param_groups for p in group["params"]
    }
    defense.unwrap(run)
    assert not isinstance(run.model, GradSampleModule) and run.loader is loader
    assert type(run.optimizer) is torch.optim.Adam
    assert run.record[EPSILON_KEY] == 0.0  # no step taken, nothing spent


def test_mia_advantage_of_dp_model_below_overfit_model(overfit):
    env, plain, private = overfit
    leak_plain = DPSGD().mia_advantage(plain.model, env)
    leak_private = DPSGD().mia_advantage(private.model, env)
    assert leak_plain >= 0.2, leak_plain  # the attack works on an overfit model
    assert leak_private <= leak_plain - 0.1, (leak_plain, leak_private)


def test_mia_finds_nothing_on_records_the_model_never_saw(overfit):
    env, plain, _ = overfit
    strangers = env.dataset.train.subset(range(200, 600))
    leak = DPSGD().mia_advantage(plain.model, dataclasses.replace(env, train_data=strangers))
    assert abs(leak) < 0.15, leak


def test_measure_on_a_reloaded_model_and_a_fresh_instance(overfit):
    env, _, private = overfit
    env = dataclasses.replace(env, record=dict(private.record))
    first = DPSGD({"noise_multiplier": 2.0}).measure(private.model, env)
    reloaded = build_model(private.arch, seed=99)
    reloaded.load_state_dict(private.model.state_dict())
    assert DPSGD({"noise_multiplier": 2.0}).measure(reloaded, env) == first
    assert math.isfinite(first["epsilon"])


def test_model_without_dp_reports_infinite_epsilon(overfit):
    env, plain, _ = overfit
    assert DPSGD().measure(plain.model, env)["epsilon"] == math.inf


def test_best_threshold_separates_and_respects_ties():
    members = torch.tensor([0.1, 0.2, 0.3])
    others = torch.tensor([0.5, 0.6, 0.7])
    assert 0.3 <= _best_threshold(members, others) < 0.5
    # All losses equal: no threshold helps, so nobody is called a member.
    same = torch.full((4,), 0.4)
    assert _best_threshold(same, same) < 0.4


def test_config_takes_exactly_one_budget():
    assert DPSGD({"target_epsilon": 2.0}).config.noise_multiplier is None
    assert DPSGD().config.noise_multiplier == 1.0
    with pytest.raises(ValidationError):
        DPSGD({"target_epsilon": 2.0, "noise_multiplier": 1.0})
