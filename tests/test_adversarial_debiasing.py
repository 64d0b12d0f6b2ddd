"""Adversarial debiasing: the equalized-odds gap falls vs no defense on Adult, accuracy holds."""

from __future__ import annotations

import pytest
import torch
from fairness_data import adult_profile, adult_slice, assert_lowers_equalized_odds_gap

from defcon.engine.defense import Environment
from defcon.engine.training import train
from defcon.errors import DefconError
from pipeline_stages.in_training.adversarial_debiasing import AdversarialDebiasing, Adversary


def test_lowers_equalized_odds_gap_on_adult():
    assert_lowers_equalized_odds_gap(AdversarialDebiasing)


def test_one_instance_trains_like_a_fresh_one_every_time():
    env = Environment(dataset=adult_slice(0), seed=0, profile=adult_profile())
    defense = AdversarialDebiasing({"projection": True})
    first = train(env, env.dataset.train, [defense], epochs=1).model.state_dict()
    second = train(env, env.dataset.train, [defense], epochs=1).model.state_dict()
    fresh = train(env, env.dataset.train, [AdversarialDebiasing({"projection": True})], epochs=1)
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(first[key], value) and torch.equal(second[key], value), key


def test_adversary_sees_the_label_only_for_equalized_odds():
    z, y = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    assert Adversary(with_label=True).linear.in_features == 3
    assert Adversary(with_label=False)(z, y).shape == (2,)


def test_needs_a_sensitive_attribute(make_env):
    env = make_env("digits")
    with pytest.raises(DefconError, match="sensitive attribute"):
        AdversarialDebiasing().measure(torch.nn.Linear(64, 10), env)
