"""Integrated-Gradients explanations: complete attributions, predictions unchanged."""

from __future__ import annotations

import pytest
import torch

from defcon.models import arch_for, build_model
from defcon.training import train
from pipeline_stages.post_training.explanations import ExplainedModel, Explanations
from pipeline_stages.post_training.output_watermark import OutputWatermark


@pytest.fixture(scope="module")
def trained(make_env):
    env = make_env("digits", seed=0, profile="tiny")
    return env, train(env, env.dataset.train).model


def test_predictions_unchanged_and_attributions_complete(trained):
    env, model = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explained = Explanations().apply(model, env)
    assert isinstance(explained, ExplainedModel) and explained.model is not model
    x = env.dataset.test.x[:50]
    with torch.no_grad():
        assert torch.equal(explained(x), model(x))
    attributions = explained.explain(x)
    assert attributions.shape == x.shape
    # Completeness: attributions add up to f_t(x) - f_t(0) for the predicted class t.
    with torch.no_grad():
        logits = model(x)
        target = logits.argmax(1)
        rows = torch.arange(len(x))
        gap = logits[rows, target] - model(torch.zeros_like(x))[rows, target]
    total = attributions.reshape(len(x), -1).sum(1)
    assert (total - gap).abs().mean() < 0.02 * gap.abs().mean()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_error_small_for_normal_model_large_for_a_discontinuous_one(trained):
    env, model = trained
    defense = Explanations()
    error = defense.measure(model, env)["explanation_error"]
    assert 0 <= error < 0.02
    assert defense.measure(defense.apply(model, env), env)["explanation_error"] == pytest.approx(
        error
    )
    # Control: a keyed watermark API answers discontinuously along the path; IG breaks down.
    api = OutputWatermark().apply(model, env)
    assert defense.measure(api, env)["explanation_error"] > error + 0.05


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_more_steps_give_smaller_error(trained, method):
    env, model = trained
    few = Explanations({"n_steps": 5, "method": method}).measure(model, env)["explanation_error"]
    many = Explanations({"n_steps": 100, "method": method}).measure(model, env)["explanation_error"]
    assert many < few / 3


def test_measure_on_fresh_instance_after_state_dict_reload(trained):
    env, model = trained
    reloaded = build_model(arch_for(env.dataset, width=env.profile.width), seed=7)
    reloaded.load_state_dict(model.state_dict())
    assert Explanations().measure(reloaded, env) == pytest.approx(
        Explanations().measure(model, env)
    )
