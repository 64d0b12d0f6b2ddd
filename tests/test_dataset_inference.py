"""Dataset inference: the ownership test recognises a model trained on the owner's data only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from defcon.models import predict
from defcon.training import train
from pipeline_stages.post_training.dataset_inference import (
    DatasetInference,
    DatasetInferenceConfig,
    blind_walk_distances,
)


@pytest.fixture(scope="module")
def owner_and_independent(make_env):
    """The owner trains on one half of the training split; an independent party on the other."""
    env = make_env("digits", seed=0, profile="quick")
    train_split = env.dataset.train
    order = np.random.default_rng(0).permutation(len(train_split))
    private = train_split.subset(order[: len(order) // 2])
    other = train_split.subset(order[len(order) // 2 :])
    env = dataclasses.replace(env, train_data=private)
    owner = train(env, private).model
    independent = train(dataclasses.replace(env, seed=100), other).model
    return env, owner, independent


def test_owner_model_recognised_independent_model_not(owner_and_independent):
    env, owner, independent = owner_and_independent
    defense = DatasetInference()
    p_owner = defense.measure(owner, env)["ownership_p_value"]
    p_independent = defense.measure(independent, env)["ownership_p_value"]
    assert p_owner < 0.01
    assert p_independent > 0.1  # the independent model is not claimed


def test_model_trained_on_other_data_is_not_claimed(owner_and_independent):
    env, _, _ = owner_and_independent
    on_validation = train(dataclasses.replace(env, seed=200), env.dataset.val).model
    assert DatasetInference().measure(on_validation, env)["ownership_p_value"] > 0.1


def test_apply_is_an_unchanged_copy_and_measure_is_reproducible(owner_and_independent):
    env, owner, _ = owner_and_independent
    copied = DatasetInference().apply(owner, env)
    assert copied is not owner
    assert torch.equal(predict(copied, env.dataset.test.x), predict(owner, env.dataset.test.x))
    config = {"fit_samples": 100, "test_samples": 100, "directions": 2}  # with the blind walk
    first = DatasetInference(config).measure(owner, env)
    assert DatasetInference(config).measure(copied, env) == first  # fresh instance, same p-value
    assert 0.0 <= first["ownership_p_value"] <= 1.0


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
