"""Risk attacks: each succeeds against an undefended model where it should, refuses where it
does not apply; the guideline's predictions follow the factor declarations."""

from __future__ import annotations

import dataclasses

import pytest

from defcon.errors import DefconError
from defcon.vocabulary import Arrow, Factor, Risk


@pytest.fixture(scope="module")
def digits_model(make_env):
    from defcon.engine.training import train

    env = make_env("digits")
    env.train_data = env.dataset.train
    return env, train(env, env.dataset.train).model


@pytest.fixture(scope="module")
def adult_model(make_env):
    from defcon.engine.training import train

    env = make_env("adult")
    env.train_data = env.dataset.train
    return env, train(env, env.dataset.train).model


def test_evasion_pgd_lowers_accuracy_far_below_clean(digits_model):
    from defcon.engine.models import accuracy
    from defcon.risks.evasion import Evasion

    env, model = digits_model
    robust = Evasion().run(model, env)["robust_accuracy"]
    clean = accuracy(model, env.dataset.test.x, env.dataset.test.y)
    assert clean > 0.85
    assert robust < clean - 0.3


def test_poisoning_backdoor_succeeds_when_the_poisoner_trains_with_the_model(make_env):
    from defcon.engine.attacks import BadNets
    from defcon.engine.training import train
    from defcon.risks.poisoning import Poisoning

    env = make_env("digits")
    env.poisoner = BadNets.for_dataset(env.dataset, 0)
    env.train_data, _ = env.poisoner.poison(env.dataset.train, 0)
    model = train(env, env.train_data).model
    assert Poisoning().run(model, env)["attack_success_rate"] > 0.7
    with pytest.raises(DefconError, match="BadNets poisoner"):
        Poisoning().run(model, dataclasses.replace(env, poisoner=None))


def test_model_theft_copies_an_undefended_api(digits_model):
    from defcon.risks.model_theft import ModelTheft

    env, model = digits_model
    stolen = ModelTheft().run(model, env)
    assert stolen["surrogate_fidelity"] > 0.6  # 10 classes: chance ≈ 0.1
    assert 0.5 < stolen["surrogate_accuracy"] <= 1.0


def test_membership_inference_beats_chance_on_an_undefended_model(adult_model):
    from defcon.risks.membership import MembershipInference

    env, model = adult_model
    leak = MembershipInference().run(model, env)
    assert leak["mia_auc"] > 0.52
    assert 0.0 <= leak["mia_tpr_at_1_fpr"] <= 1.0


def test_reconstruction_drifts_towards_each_class(digits_model):
    from defcon.risks.reconstruction import DataReconstruction

    env, model = digits_model
    found = DataReconstruction().run(model, env)
    assert found["reconstruction_similarity"] > 0.2  # an unchanged start scores about 0
    assert found["reconstruction_class_match"] > 0.5  # chance: 0.1


def test_attribute_inference_and_discrimination_on_adult(adult_model):
    from defcon.risks.attribute import AttributeInference
    from defcon.risks.discrimination import Discrimination

    env, model = adult_model
    inferred = AttributeInference().run(model, env)
    assert inferred["attribute_auc"] > 0.53
    unfair = Discrimination().run(model, env)
    assert unfair["equalized_odds_difference"] > 0.05
    assert unfair["demographic_parity_difference"] > 0.05


def test_distribution_inference_tells_group_ratios_apart(adult_model):
    from defcon.risks.distribution import DistributionInference

    env, model = adult_model
    guessed = DistributionInference({"victims": 6, "shadows": 4}).run(model, env)
    assert guessed["distribution_inference_accuracy"] > 0.5


@pytest.mark.parametrize(
    "risk", ["attribute_inference", "distribution_inference", "discrimination"]
)
def test_group_attacks_refuse_a_dataset_without_sensitive_attribute(make_env, risk):
    from defcon.risks import ATTACKS

    env = make_env("digits")
    attack = ATTACKS[Risk(risk)]()
    assert "sensitive attribute" in attack.refusal(env.dataset)
    with pytest.raises(DefconError, match=f"{risk} cannot be measured on digits"):
        attack.run(object(), env)


def test_guideline_predictions_follow_the_declarations():
    from defcon.catalog import builtin_catalog
    from defcon.risks.guideline import RISK_FACTORS, predict, predict_combination

    catalog = builtin_catalog()
    adversarial = predict(catalog["adversarial_training"], Risk.MEMBERSHIP_INFERENCE)
    # moves O3↑ (membership falls with O3) and O2.1↑ (rises with it): objective factors tie
    assert {link.factor for link in adversarial.links} == {Factor.O3, Factor.O2_1}
    assert adversarial.direction == "silent" and adversarial.basis == "tie"
    evasion = predict(catalog["dp_sgd"], Risk.EVASION)  # O3↓, O1↓, D2↓ against R1: D2↑ O1↓ O3↓
    assert evasion.direction == "up" and evasion.basis == "objective"
    fairness = predict(catalog["group_fairness"], Risk.DATA_RECONSTRUCTION)
    assert fairness.direction == "down"  # O2.2↓ and reconstruction goes up with O2.2
    assert predict(catalog["dp_sgd"], Risk.MEMBERSHIP_INFERENCE).basis == "mitigates"
    assert predict(catalog["explanations"], Risk.EVASION).direction == "silent"
    both = predict_combination([catalog["dp_sgd"], catalog["adversarial_training"]], Risk.EVASION)
    assert both.direction == "silent" and "disagree" in both.reason
    assert (Factor.O2_2, Arrow.UP) in RISK_FACTORS[Risk.DISCRIMINATION]
