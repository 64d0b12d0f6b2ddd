"""In-training pairs share one loop unchanged; two users of an exclusive slot are refused."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from defcon.catalog import builtin_catalog
from defcon.engine.data import load_dataset
from defcon.engine.defense import Environment
from defcon.engine.models import ArchConfig, accuracy, build_model
from defcon.engine.training import supply_reference_models, train
from defcon.errors import DefconError
from defcon.planning.profiles import get_profile
from pipeline_stages.in_training.adversarial_training import AdversarialTraining
from pipeline_stages.in_training.dp_sgd import DPSGD, EPSILON_KEY
from pipeline_stages.in_training.group_fairness import GroupFairness


def _spy(monkeypatch, defense, hook: str, check) -> list[int]:
    """Count calls of `defense.<hook>` and run `check(run)` at each call; behaviour unchanged."""
    calls: list[int] = []
    original = getattr(defense, hook)

    def wrapped(run, *args):
        check(run)
        calls.append(1)
        return original(run, *args)

    monkeypatch.setattr(defense, hook, wrapped)
    return calls


def _is_private(run) -> None:
    assert isinstance(run.model, GradSampleModule)


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_adversarial_training_and_dp_sgd_share_one_loop(make_env, monkeypatch, method):
    env = make_env()
    adversarial, private = AdversarialTraining({"method": method}), DPSGD()

    def attack_time(run):  # the loop turns the per-sample-gradient hooks off for the attack
        _is_private(run)
        assert not run.model.hooks_enabled

    def loss_time(run):  # ... and back on, in training mode, before the loss
        _is_private(run)
        assert run.model.hooks_enabled and run.model.training

    transforms = _spy(monkeypatch, adversarial, "transform_batch", attack_time)
    terms = _spy(monkeypatch, adversarial, "loss_term", loss_time)
    both = train(env, env.dataset.train, [adversarial, private], epochs=2)
    alone = train(env, env.dataset.train, [DPSGD()], epochs=2)
    assert len(transforms) > 0 and len(terms) == len(transforms)

    # DP-SGD still accounts exactly as alone (same σ, sampling rate and steps).
    assert both.record[EPSILON_KEY] == pytest.approx(alone.record[EPSILON_KEY])
    assert not isinstance(both.model, GradSampleModule)
    env.record.update(both.record)
    dp_metrics = DPSGD().measure(both.model, env)
    robust = AdversarialTraining({"method": method}).measure(both.model, env)
    assert dp_metrics["epsilon"] == both.record[EPSILON_KEY]
    assert 0 <= dp_metrics["mia_auc"] <= 1 and 0 <= dp_metrics["mia_tpr_at_1_fpr"] <= 1
    clean = accuracy(both.model, env.dataset.test.x, env.dataset.test.y)
    assert clean > 0.3  # it learnt something (10 classes)
    assert 0 <= robust["robust_accuracy"] <= clean + 1e-9
    # The adversarial batches changed what was learnt.
    alone_state = alone.model.state_dict()
    assert any(not torch.equal(v, alone_state[k]) for k, v in both.model.state_dict().items())


@functools.lru_cache(maxsize=1)
def _adult_env() -> Environment:
    # DP-SGD needs more than the tiny 2,000 rows to learn more than the majority class on Adult.
    profile = get_profile("tiny").model_copy(
        update={"lr": 2e-3, "batch_size": 128, "epochs": {"default": 3}}
    )
    env = Environment(load_dataset("adult", seed=0, max_train=8000), seed=0, profile=profile)
    return supply_reference_models(env)


def test_group_fairness_and_dp_sgd_share_one_loop(monkeypatch):
    env = copy.copy(_adult_env())
    env.record = {}
    fairness, private = GroupFairness(), DPSGD()
    terms = _spy(monkeypatch, fairness, "loss_term", _is_private)
    both = train(env, env.dataset.train, [fairness, private])
    alone = train(env, env.dataset.train, [DPSGD()])
    assert len(terms) > 0
    assert both.record[EPSILON_KEY] == pytest.approx(alone.record[EPSILON_KEY])
    env.record.update(both.record)
    dp_metrics = DPSGD().measure(both.model, env)
    gap = GroupFairness().measure(both.model, env)["equalized_odds_difference"]
    assert dp_metrics["epsilon"] == both.record[EPSILON_KEY] and 0 <= gap <= 1
    majority = float(torch.bincount(env.dataset.test.y).max()) / len(env.dataset.test)
    assert accuracy(both.model, env.dataset.test.x, env.dataset.test.y) > majority + 0.03


def test_trades_per_sample_gradients_under_opacus_cover_both_forward_passes():
    """TRADES runs a second forward pass (on x') before one backward: Opacus' per-sample
    gradients must equal the gradients of each sample's whole TRADES loss."""
    torch.manual_seed(0)
    arch = ArchConfig(family="cnn", input_shape=(1, 8, 8), num_classes=3, width=4, norm="group")
    model = build_model(arch, 0)
    reference = copy.deepcopy(model)
    wrapped = GradSampleModule(model)
    x, x_adv, y = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8), torch.randint(0, 3, (5,))

    def per_sample_loss(clean_logits, adv_logits):
        kl = F.kl_div(F.log_softmax(adv_logits, 1), F.softmax(clean_logits, 1), reduction="none")
        return F.cross_entropy(clean_logits, y, reduction="none") + 6 * kl.sum(1)

    per_sample_loss(wrapped(x), wrapped(x_adv)).mean().backward()
    for i in range(len(y)):
        reference.zero_grad()
        per_sample_loss(reference(x), reference(x_adv))[i].backward()
        for expected, got in zip(reference.parameters(), model.parameters(), strict=True):
            assert torch.allclose(expected.grad, got.grad_sample[i], atol=1e-5)


def test_two_privacy_wrappers_are_a_structural_clash(make_env):
    # the same class bound to a second declaration: the spec, not the class, is the identity
    twin = DPSGD(spec=builtin_catalog()["dp_sgd"].model_copy(update={"name": "dp_sgd_twin"}))
    assert twin.name == "dp_sgd_twin"
    with pytest.raises(DefconError, match=r"structural clash.*privacy_wrapper"):
        train(make_env(), make_env().dataset.train, [DPSGD(), twin])


def test_loss_terms_are_not_exclusive(make_env):
    env = make_env("compas")
    trained = train(env, env.dataset.train, [GroupFairness(), AdversarialTraining()], epochs=1)
    assert 0 <= GroupFairness().measure(trained.model, env)["equalized_odds_difference"] <= 1
