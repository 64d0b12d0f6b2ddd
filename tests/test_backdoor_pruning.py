"""Backdoor-neuron pruning: removes a BadNets backdoor (vs the unpruned model), keeps clean accuracy."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from defcon.engine.attacks import BadNets
from defcon.engine.models import accuracy, arch_for, build_model
from defcon.engine.training import train
from pipeline_stages.post_training.backdoor_pruning import BackdoorPruning, core_model


def _poisoned(make_env, norm: str, seed: int):
    env = make_env("digits", seed=seed, profile="quick")
    poisoner = BadNets.for_dataset(env.dataset, seed)
    poisoned, _ = poisoner.poison(env.dataset.train, seed)
    env = dataclasses.replace(env, poisoner=poisoner, train_data=poisoned)
    arch = arch_for(env.dataset, width=env.profile.width, norm=norm)
    return env, train(env, poisoned, arch=arch).model, arch


@pytest.fixture(scope="module")
def batchnorm_case(make_env):
    return _poisoned(make_env, "batch", 0)


@pytest.fixture(scope="module")
def groupnorm_case(make_env):
    return _poisoned(make_env, "group", 1)


class _Wrapper(nn.Module):
    """Stands for another post-training defense's API wrapper."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _asr_and_acc(defense, model, env):
    test = env.dataset.test
    return defense.measure(model, env)["attack_success_rate"], accuracy(model, test.x, test.y)


def test_pruning_removes_backdoor_on_batchnorm_model(batchnorm_case):
    env, model, _ = batchnorm_case
    defense = BackdoorPruning()
    asr_before, acc_before = _asr_and_acc(defense, model, env)
    pruned = defense.apply(model, env)
    asr_after, acc_after = _asr_and_acc(defense, pruned, env)
    assert asr_before > 0.8  # the no-defense control is backdoored
    assert asr_after < 0.3 and asr_after < asr_before - 0.5
    assert acc_after > acc_before - 0.07
    assert sum(defense.last_pruned.values()) > 0


def test_pruning_works_on_groupnorm_model(groupnorm_case):
    env, model, _ = groupnorm_case
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    defense = BackdoorPruning()
    asr_before, acc_before = _asr_and_acc(defense, model, env)
    pruned = defense.apply(model, env)
    asr_after, acc_after = _asr_and_acc(defense, pruned, env)
    assert asr_before > 0.8
    assert asr_after < asr_before - 0.4
    assert acc_after > acc_before - 0.07


def test_clean_model_keeps_accuracy_and_low_asr(make_env):
    env = make_env("digits", seed=0, profile="quick")
    model = train(env, env.dataset.train).model
    defense = BackdoorPruning()
    pruned = defense.apply(model, env)
    val = env.dataset.val
    assert accuracy(pruned, val.x, val.y) >= accuracy(model, val.x, val.y) - 0.03 - 1e-9
    # The default BadNets trigger was never planted: ASR stays low with and without pruning.
    assert defense.measure(model, env)["attack_success_rate"] < 0.2
    assert defense.measure(pruned, env)["attack_success_rate"] < 0.2


def test_input_model_not_modified_and_state_dict_round_trip(batchnorm_case):
    env, model, arch = batchnorm_case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = BackdoorPruning().apply(model, env)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(v, before[k]) for k, v in pruned.state_dict().items())
    # Same architecture: the pruned weights load into a fresh model, measured by a fresh instance.
    reloaded = build_model(arch, seed=123)
    reloaded.load_state_dict(pruned.state_dict())
    fresh = BackdoorPruning()
    assert fresh.measure(reloaded, env) == BackdoorPruning().measure(pruned, env)


def test_works_through_a_wrapper_and_uses_no_test_data(batchnorm_case):
    env, model, _ = batchnorm_case
    plain = BackdoorPruning().apply(model, env)
    wrapped = BackdoorPruning().apply(_Wrapper(model), env)
    assert isinstance(wrapped, _Wrapper) and core_model(wrapped) is wrapped.inner
    for a, b in zip(plain.state_dict().values(), wrapped.inner.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # The threshold is chosen on validation data: scrambling the test split changes nothing.
    test = env.dataset.test
    scrambled = dataclasses.replace(
        env, dataset=dataclasses.replace(env.dataset, test=test.with_(x=torch.rand_like(test.x)))
    )
    other = BackdoorPruning().apply(model, scrambled)
    for a, b in zip(plain.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_rejects_a_model_without_features_and_head(make_env):
    from defcon.errors import DefconError

    with pytest.raises(DefconError, match="features"):
        BackdoorPruning().apply(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), make_env())
