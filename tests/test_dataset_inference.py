"""Dataset inference: the ownership test recognises a model trained on the owner's data only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats

from defcon.engine.models import predict
from defcon.engine.training import train
from pipeline_stages.post_training.dataset_inference import (
    DatasetInference,
    DatasetInferenceConfig,
    blind_walk_distances,
    welch_log10_p,
)
from pipeline_stages.post_training.output_watermark import OutputWatermark

DEPLOYED = frozenset({"dataset_inference"})


@pytest.fixture(scope="module")
def owner_and_independent(make_env):
    """The owner trains on one half of the training split; an independent party on the other."""
    env = make_env("digits", seed=0, profile="quick")
    train_split = env.dataset.train
    order = np.random.default_rng(0).permutation(len(train_split))
    private = train_split.subset(order[: len(order) // 2])
    other = train_split.subset(order[len(order) // 2 :])
    env = dataclasses.replace(env, train_data=private, deployed=DEPLOYED)
    owner = train(env, private).model
    independent = train(dataclasses.replace(env, seed=100), other).model
    return env, owner, independent


def test_owner_model_recognised_independent_model_not(owner_and_independent):
    env, owner, independent = owner_and_independent
    defense = DatasetInference()
    owner_evidence = defense.measure(owner, env)["ownership_log10_p"]
    independent_evidence = defense.measure(independent, env)["ownership_log10_p"]
    assert owner_evidence > 2  # p < 0.01
    assert independent_evidence < 1  # p > 0.1: the independent model is not claimed


def test_model_trained_on_other_data_is_not_claimed(owner_and_independent):
    env, _, _ = owner_and_independent
    on_validation = train(dataclasses.replace(env, seed=200), env.dataset.val).model
    assert DatasetInference().measure(on_validation, env)["ownership_log10_p"] < 1


def test_apply_is_an_unchanged_copy_and_measure_is_reproducible(owner_and_independent):
    env, owner, _ = owner_and_independent
    copied = DatasetInference().apply(owner, env)
    assert copied is not owner
    assert torch.equal(predict(copied, env.dataset.test.x), predict(owner, env.dataset.test.x))
    config = {"fit_samples": 100, "test_samples": 100, "directions": 2}  # with the blind walk
    first = DatasetInference(config).measure(owner, env)
    assert DatasetInference(config).measure(copied, env) == first  # fresh instance, same value
    assert 0.0 <= first["ownership_log10_p"] <= 10.0


def test_log10_p_matches_scipy_and_does_not_underflow():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.1, 1, 400), rng.normal(0, 1.5, 300)
    p = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    assert welch_log10_p(a, b) == pytest.approx(-np.log10(p), rel=1e-6)
    far_a, far_b = rng.normal(10, 1, 2000), rng.normal(0, 1, 2000)
    assert stats.ttest_ind(far_a, far_b, equal_var=False, alternative="greater").pvalue == 0
    assert 300 < welch_log10_p(far_a, far_b, cap=np.inf) < np.inf  # finite: no underflow
    assert welch_log10_p(far_a, far_b) == 10.0  # the cap
    assert welch_log10_p(b - 1, b) == pytest.approx(0.0, abs=1e-9)  # p close to 1
    assert welch_log10_p(np.ones(5), np.ones(5)) == 0.0  # no signal at all


def test_the_copy_a_thief_holds_is_verified_not_the_owners_api(make_env):
    """Regression: the test ran through the owner's own DAWN wrapper (fmnist p 0.05 → 0.65)."""
    env = make_env("digits", seed=1, profile="tiny")
    env = dataclasses.replace(env, deployed=DEPLOYED | {"output_watermark"})
    model = train(env, env.dataset.train).model
    defense = DatasetInference()
    bare = defense.measure(model, env)["ownership_log10_p"]
    behind_api = defense.measure(OutputWatermark().apply(model, env), env)["ownership_log10_p"]
    assert behind_api == bare
    assert bare > 1.3  # p < 0.05: this owner's model is recognised


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_undefended_reading_is_an_independent_model_and_not_accused(make_env, seed):
    env = make_env("digits", seed=seed, profile="tiny")
    assert "dataset_inference" not in env.deployed
    model = train(env, env.dataset.train).model
    defense = DatasetInference()
    assert defense.suspect(model, env) is env.independent_model()
    undefended = defense.measure(model, env)["ownership_log10_p"]
    assert undefended < 1.3  # p > 0.05: no false accusation
    assert (
        undefended == defense.measure(OutputWatermark().apply(model, env), env)["ownership_log10_p"]
    )


def test_blind_walk_distances(owner_and_independent):
    env, owner, _ = owner_and_independent
    config = DatasetInferenceConfig(directions=4)
    test = env.dataset.test.subset(np.arange(120))
    wrong_labels = test.with_(y=(predict(owner, test.x) + 1) % env.dataset.num_classes)
    assert (blind_walk_distances(owner, wrong_labels, config, seed=0) == 0).all()
    distances = blind_walk_distances(owner, test, config, seed=0)
    assert distances.shape == (120, config.directions)
    assert (distances >= 0).all() and (distances <= config.max_step * 2).all()
    assert np.median(distances) > config.min_step  # correctly classified points lie inside
    assert np.array_equal(distances, blind_walk_distances(owner, test, config, seed=0))
