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


def test_chance_loss_is_the_conditional_entropy_of_s_on_the_batch():
    """What an adversary that ignores the output scores: H(s | label) in nats."""
    import math

    from pipeline_stages.in_training.adversarial_debiasing import chance_loss

    s = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    label = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # label 0: s is 50/50 (ln 2); label 1: s is always 1 (0); each half of the batch
    assert float(chance_loss(s, label)) == pytest.approx(math.log(2) / 2, abs=1e-4)
    one_group = torch.zeros_like(label)
    rate = 6 / 8
    marginal = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert float(chance_loss(s, one_group)) == pytest.approx(marginal, abs=1e-5)


def test_stop_at_chance_stops_pushing_once_the_adversary_is_no_better_than_guessing():
    """Past chance, pushing further only makes the adversary confidently wrong (the groups'
    advantage reversed): the capped loss's gradient on the predictor vanishes there, and below
    chance it is the adversary's own."""
    from pipeline_stages.in_training.adversarial_debiasing import chance_loss, up_to_chance

    s = torch.tensor([0.0, 1.0, 0.0, 1.0])
    label = torch.zeros(4)
    adversary = Adversary(with_label=True)
    with torch.no_grad():
        adversary.linear.weight.copy_(torch.tensor([[4.0, 0.0, 0.0]]))  # ŝ high where z high
        adversary.linear.bias.fill_(-2.0)
    for z_values, fooled in (([3.0, -3.0, 3.0, -3.0], True), ([-3.0, 3.0, -3.0, 3.0], False)):
        z = torch.tensor(z_values, requires_grad=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(adversary(z, label), s)
        assert (float(loss.detach()) > float(chance_loss(s, label))) == fooled
        (-up_to_chance(loss, s, label)).backward()
        assert z.grad is not None and (float(z.grad.abs().sum()) == 0.0) == fooled
