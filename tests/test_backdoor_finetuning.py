"""backdoor_finetuning: re-initialising the head and fine-tuning on clean data removes a BadNets
backdoor (ASR far below the poisoned no-defense model) while keeping clean accuracy."""

from __future__ import annotations

import copy

import pytest
import torch

from defcon.engine.attacks import BadNets
from defcon.engine.defense import Environment
from defcon.engine.models import accuracy, build_model
from defcon.engine.registry import make_defense
from defcon.engine.training import train
from pipeline_stages.in_training.backdoor_finetuning import BackdoorFinetuning


def _poisoned_env(make_env, dataset: str = "digits") -> tuple[Environment, object]:
    env = make_env(dataset)
    env.poisoner = BadNets.for_dataset(env.dataset, env.seed)
    poisoned, _ = env.poisoner.poison(env.dataset.train, env.seed)
    env.train_data = poisoned
    return env, poisoned


@pytest.fixture(scope="module")
def digits_runs(make_env):
    env, poisoned = _poisoned_env(make_env)
    plain = train(env, poisoned)
    defense = BackdoorFinetuning()
    defended = train(env, poisoned, [defense])
    return env, plain, defended, defense


def test_registry_builds_it() -> None:
    assert isinstance(make_defense("backdoor_finetuning"), BackdoorFinetuning)


def test_finetuning_removes_the_backdoor_and_keeps_accuracy(digits_runs) -> None:
    env, plain, defended, defense = digits_runs
    test = env.dataset.test
    asr_plain = defense.measure(plain.model, env)["attack_success_rate"]
    asr_defended = defense.measure(defended.model, env)["attack_success_rate"]
    assert asr_plain > 0.7  # the poisoner really planted a backdoor
    assert asr_defended < 0.15
    assert asr_defended < asr_plain - 0.5
    acc_plain = accuracy(plain.model, test.x, test.y)
    acc_defended = accuracy(defended.model, test.x, test.y)
    assert acc_defended > acc_plain - 0.10
    assert defended.record["backdoor_finetuning.clean_samples"] == len(env.attacker_data)


def test_measure_on_a_fresh_instance_after_reload(digits_runs) -> None:
    env, _, defended, defense = digits_runs
    reloaded = build_model(defended.arch, seed=123)
    reloaded.load_state_dict(copy.deepcopy(defended.model.state_dict()))
    assert BackdoorFinetuning().measure(reloaded, env) == defense.measure(defended.model, env)


def test_measure_falls_back_to_the_default_poisoner(digits_runs) -> None:
    env, plain, _, defense = digits_runs
    without = Environment(dataset=env.dataset, seed=env.seed, profile=env.profile)
    assert defense.measure(plain.model, without) == defense.measure(plain.model, env)


def test_clean_fraction_is_a_seeded_subset_of_the_held_out_half(make_env) -> None:
    env = make_env()
    half = BackdoorFinetuning({"clean_fraction": 0.5})
    subset = half.clean_data(env)
    assert len(subset) == round(0.5 * len(env.attacker_data))
    again = BackdoorFinetuning({"clean_fraction": 0.5}).clean_data(env)
    assert torch.equal(subset.x, again.x) and torch.equal(subset.y, again.y)
    rows = {tuple(row.flatten().tolist()) for row in env.attacker_data.x}
    assert all(tuple(row.flatten().tolist()) in rows for row in subset.x)
    # never the calibration half: checks treat it as unseen by the served model
    calibration = {tuple(row.flatten().tolist()) for row in env.calibration_data.x}
    full = BackdoorFinetuning().clean_data(env)
    assert not any(tuple(row.flatten().tolist()) in calibration for row in full.x)


def test_tabular_backdoor_is_removed(make_env) -> None:
    env, poisoned = _poisoned_env(make_env, "adult")
    defense = BackdoorFinetuning()
    plain = train(env, poisoned)
    defended = train(env, poisoned, [defense])
    asr_plain = defense.measure(plain.model, env)["attack_success_rate"]
    asr_defended = defense.measure(defended.model, env)["attack_success_rate"]
    assert asr_plain > 0.7
    assert asr_defended < asr_plain - 0.5
    test = env.dataset.test
    assert accuracy(defended.model, test.x, test.y) > accuracy(plain.model, test.x, test.y) - 0.05
