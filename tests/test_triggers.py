"""Triggers are valid records, disjoint between secrets, and never accuse an independent model.

Tabular triggers keep one category per one-hot group and observed numeric values; the BadNets
poisoner's and both watermarks' triggers touch disjoint columns (their corners); an independent
model trained on clean Adult data is neither backdoored nor watermarked, while the watermarked
models are detected."""

from __future__ import annotations

import itertools

import pytest
import torch

from defcon.engine.attacks import CORNERS, BadNets, make_trigger, trigger_regions
from defcon.engine.training import train
from pipeline_stages.pre_training.data_watermark import DataWatermark
from pipeline_stages.pre_training.model_watermark import ModelWatermark


def _secrets(env):
    """The three secrets' triggers (default configs): BadNets, model and data watermark."""
    return {
        "badnets": BadNets.for_dataset(env.dataset, env.seed).trigger,
        "model_watermark": ModelWatermark().trigger(env),
        "data_watermark": DataWatermark().trigger(env),
    }


@pytest.mark.parametrize("dataset", ["adult", "compas"])
@pytest.mark.parametrize("seed", [0, 1])
def test_stamped_tabular_records_are_valid(make_env, dataset, seed) -> None:
    env = make_env(dataset, seed=seed)
    data = env.dataset
    observed = torch.cat([data.train.x, data.val.x, data.test.x])
    low, high = observed.min(0).values, observed.max(0).values
    for name, trigger in _secrets(env).items():
        stamped = trigger.stamp(data.test.x)
        assert not torch.equal(stamped, data.test.x), name  # the trigger changes records
        for group in data.feature_groups:
            block = stamped[:, list(group.columns)]
            if group.categorical:
                assert ((block == 0) | (block == 1)).all(), (name, group.name)
                assert (block.sum(1) == 1).all(), (name, group.name)
            else:
                (column,) = group.columns
                assert (block >= low[column]).all() and (block <= high[column]).all()
        for position, value in zip(trigger.positions, trigger.values, strict=True):
            # every stamped value is one that clean training records hold
            assert (data.train.x[:, position] == value).any(), (name, position)


@pytest.mark.parametrize("dataset", ["adult", "compas"])
def test_secrets_touch_disjoint_columns(make_env, dataset) -> None:
    for seed in (0, 1, 2, 3):
        env = make_env(dataset, seed=seed)
        columns = {name: set(t.positions) for name, t in _secrets(env).items()}
        for a, b in itertools.combinations(columns, 2):
            assert not columns[a] & columns[b], (dataset, seed, a, b)
        # the regions partition the usable groups, never the sensitive attribute
        regions = trigger_regions(env.dataset, seed)
        names = [g.name for corner in CORNERS for g in regions[corner]]
        assert len(names) == len(set(names))
        assert env.dataset.sensitive_attribute not in names
        assert all(regions[corner] for corner in CORNERS)
        if dataset == "adult":  # enough categorical groups: one in every region
            assert all(any(g.categorical for g in regions[c]) for c in CORNERS)


def test_image_triggers_are_disjoint_corner_patches(make_env) -> None:
    env = make_env("digits")
    columns = {name: set(t.positions) for name, t in _secrets(env).items()}
    for a, b in itertools.combinations(columns, 2):
        assert not columns[a] & columns[b], (a, b)


def test_triggers_are_reproducible(make_env) -> None:
    env = make_env("adult")
    target = BadNets.for_dataset(env.dataset, 0).target_class
    first = make_trigger(env.dataset, 0, "x", target_class=target, corner="top_left")
    assert first == make_trigger(env.dataset, 0, "x", target_class=target, corner="top_left")
    assert ModelWatermark().trigger(env) == ModelWatermark().trigger(make_env("adult"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_independent_model_is_not_accused_and_marked_models_are_detected(make_env, seed) -> None:
    env = make_env("adult", seed=seed)
    data = env.dataset
    badnets, model_wm, data_wm = BadNets.for_dataset(data, seed), ModelWatermark(), DataWatermark()
    independent = train(env, data.train).model
    # Measured on tiny adult: watermark accuracy 0.00 / 0.00 / 0.01, detection 0 / 0 / 0,
    # attack success 0.027 / 0.001 / 0.000 for seeds 0 / 1 / 2.
    assert model_wm.measure(independent, env)["watermark_accuracy"] <= 0.05
    assert data_wm.measure(independent, env)["detection_rate"] == 0
    assert badnets.attack_success_rate(independent, data.test) <= 0.05
    # The defended models are: watermark accuracy 0.95 / 0.99 / 0.88, detection 1 / 1 / 1.
    model_marked = train(env, model_wm.apply(data.train, env)).model
    assert model_wm.measure(model_marked, env)["watermark_accuracy"] >= 0.8
    data_marked = train(env, data_wm.apply(data.train, env)).model
    assert data_wm.measure(data_marked, env)["detection_rate"] >= 0.9
