"""fine_pruning: pruning the units clean data leaves dormant, then fine-tuning on clean data,
weakens a BadNets backdoor (vs the undefended model) and keeps clean accuracy; pruned units stay
pruned through the fine-tuning."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from defcon.catalog import builtin_catalog
from defcon.engine.attacks import BadNets
from defcon.engine.models import accuracy, arch_for, build_model
from defcon.engine.registry import make_defense
from defcon.engine.training import train
from defcon.vocabulary import Factor, Risk, Stage, Threat
from pipeline_stages.post_training.backdoor_pruning import core_model
from pipeline_stages.post_training.fine_pruning import FinePruning, pruned_layer


@pytest.fixture(scope="module")
def adult_backdoored(make_env):
    """Adult at the quick profile's width (the size the defense is measured at), poisoned."""
    env = make_env("adult", seed=0, profile="quick")
    poisoner = BadNets.for_dataset(env.dataset, 0)
    poisoned, _ = poisoner.poison(env.dataset.train, 0)
    env = dataclasses.replace(env, poisoner=poisoner, train_data=poisoned, record={})
    return env, train(env, poisoned).model


def test_spec_declares_a_post_training_poisoning_mitigation() -> None:
    spec = builtin_catalog()["fine_pruning"]
    assert spec.stage is Stage.POST and spec.mitigates == {Risk.POISONING} and not spec.uses
    assert Threat.POISONER in spec.threats
    assert [m.name for m in spec.metrics] == ["attack_success_rate"]
    assert Factor.RETRAINED_AFTER_MAIN_TRAINING in {c.factor for c in spec.moves}
    assert all(claim.reference for claim in (*spec.moves, *spec.depends_on))
    assert isinstance(make_defense("fine_pruning"), FinePruning)


def test_weakens_the_backdoor_and_keeps_accuracy(adult_backdoored) -> None:
    env, model = adult_backdoored
    before = copy.deepcopy(model.state_dict())
    defense = FinePruning()
    defended = defense.apply(model, env)
    test = env.dataset.test
    asr_plain = defense.measure(model, env)["attack_success_rate"]
    asr_defended = defense.measure(defended, env)["attack_success_rate"]
    assert asr_plain > 0.9  # the metric can fail: the poisoner planted a backdoor
    assert asr_defended < asr_plain - 0.4
    assert accuracy(defended, test.x, test.y) > accuracy(model, test.x, test.y) - 0.03
    assert defense.last_pruned > 0
    assert env.record["fine_pruning.acted.pruned_units"] == defense.last_pruned
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_pruned_units_stay_pruned_through_fine_tuning(adult_backdoored) -> None:
    env, model = adult_backdoored
    defense = FinePruning()
    defended = defense.apply(model, env)
    layer, group = pruned_layer(core_model(defended))
    assert group == 1 and layer is defended.head  # an MLP: the last hidden layer's units
    dead = (layer.weight == 0).all(dim=0)
    assert int(dead.sum()) == defense.last_pruned
    changed = [
        name
        for name, value in defended.state_dict().items()
        if value.dtype.is_floating_point and not torch.equal(value, model.state_dict()[name])
    ]
    assert "features.0.weight" in changed  # fine-tuning retrained the layers before the pruned one


def test_prunes_channels_of_the_last_convolution(make_env) -> None:
    env = make_env("digits")
    arch = arch_for(env.dataset, width=env.profile.width)
    model = build_model(arch, seed=0)
    layer, group = pruned_layer(model)
    assert layer is model.features[-2] and group * 2 * arch.width == layer.in_features
    defense = FinePruning({"accuracy_budget": 1.0, "epochs": 1, "min_steps": 0})
    defended = defense.apply(model, env)
    assert defense.last_pruned == 2 * arch.width - 1  # every channel but one, whole channels
    dead = (defended.features[-2].weight == 0).all(dim=0).reshape(-1, group)
    assert (
        int(dead.all(dim=1).sum()) == defense.last_pruned and not (dead.any(1) & ~dead.all(1)).any()
    )


def test_refuses_a_model_without_features_and_head(make_env) -> None:
    env = make_env("digits")
    problem = FinePruning().model_problem(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), env.dataset
    )
    assert problem is not None and "fine_pruning" in problem and "head" in problem
