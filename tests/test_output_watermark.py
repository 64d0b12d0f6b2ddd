"""DAWN output watermark: a keyed, deterministic share of wrong answers that extracted models inherit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from defcon.engine.defense import ServingWrapper, weights_of
from defcon.engine.models import arch_for, predict
from defcon.engine.training import train
from pipeline_stages.post_training.output_watermark import (
    OutputWatermark,
    WatermarkedAPI,
    find_api,
    keyed_choice,
    watermark_evidence,
    watermark_key,
)


@pytest.fixture(scope="module")
def trained(make_env):
    env = make_env("digits", seed=0, profile="tiny")
    return env, train(env, env.dataset.train).model


class _Outer(nn.Module):
    """Stands for a later post-training defense wrapping the API."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_extracted_model_carries_the_watermark_unlike_an_unprotected_one(trained):
    env, model = trained
    # A thief that trains long past its best agreement memorises the wrong answers.
    defense = OutputWatermark({"surrogate_epochs": 60, "early_stopping": False})
    api = defense.apply(model, env)
    protected = defense.measure(api, env)["extracted_watermark_accuracy"]
    unprotected = defense.measure(model, env)["extracted_watermark_accuracy"]
    assert protected > 0.7
    assert unprotected < 0.15  # no watermark: the surrogate copies honest answers
    # A later wrapper around the API does not hide it.
    assert defense.measure(_Outer(api), env)["extracted_watermark_accuracy"] == protected


def test_watermark_evidence_is_the_binomial_test_against_an_independent_models_chance_rate():
    # 10 classes, no disagreement on 1000 unmarked queries: the null rate is the upper 95 %
    # Clopper-Pearson bound 1 - 0.05 ** (1 / 1000) = 0.0030, over 9 wrong classes = 0.00033
    # 3 of 50 marked queries agreeing: P(X >= 3) = C(50,3) p^3 (1 + O(p)) ≈ 7.1e-7
    assert watermark_evidence(3, 50, 0, 1000, 10) == pytest.approx(6.15, abs=0.05)
    # as often as chance allows: no evidence (a surrogate disagreeing on 10 % of queries lands
    # on the keyed label of a binary task 10 % of the time)
    assert watermark_evidence(5, 50, 100, 1000, 2) < 0.5
    assert watermark_evidence(0, 50, 0, 1000, 10) == 0.0
    assert watermark_evidence(50, 50, 0, 1000, 10) == 10.0  # capped, as dataset inference's
    assert watermark_evidence(3, 0, 0, 1000, 10) != watermark_evidence(3, 0, 0, 1000, 10)  # NaN


def test_the_early_stopping_thief_still_leaves_evidence_an_honest_copy_does_not(trained):
    """A fifth of the answers marked: on the tiny digits slice the default twentieth leaves
    the thief's evidence near 1 (−log10 p), on either side of it depending on the CPU's last
    bits; the benchmarks measure the default's strength at the quick profile."""
    env, model = trained
    defense = OutputWatermark({"fraction": 0.2})
    protected = defense.measure(defense.apply(model, env), env)["watermark_evidence"]
    unprotected = defense.measure(model, env)["watermark_evidence"]
    assert unprotected < 1.0 < protected


def test_the_thief_early_stops_on_its_held_out_queries_and_keeps_its_best_epoch(trained):
    env, model = trained
    defense = OutputWatermark()
    api = defense.apply(model, env)
    thief = defense.thief_queries(env)
    queries = thief.with_(y=predict(api, thief.x))
    stolen, held_out = defense.split_queries(queries, env)
    assert len(held_out) == round(0.2 * len(queries))
    assert len(stolen) + len(held_out) == len(queries)
    assert torch.equal(defense.split_queries(queries, env)[1].x, held_out.x)  # seeded
    extraction = defense.steal(stolen, held_out, env)
    assert extraction.epochs < defense.config.surrogate_epochs  # cheaper than 40 epochs
    assert extraction.epochs - extraction.best_epoch == defense.config.patience
    agreement = float((predict(extraction.model, held_out.x) == held_out.y).float().mean())
    assert agreement == pytest.approx(extraction.held_out_agreement)  # the best epoch's weights
    assert agreement > 0.85  # a faithful copy of the API
    protected = defense.measure(api, env)["extracted_watermark_accuracy"]
    assert protected >= defense.measure(model, env)["extracted_watermark_accuracy"]


def test_the_thief_uses_the_threat_models_architecture_not_the_victims(trained):
    """Regression: under DP-SGD the thief copied the victim's GroupNorm."""
    env, model = trained
    group = dataclasses.replace(
        env, arch=arch_for(env.dataset, width=env.profile.width, norm="group")
    )
    defense = OutputWatermark({"surrogate_epochs": 2})
    queries = defense.thief_queries(group)
    stolen, held_out = defense.split_queries(queries.with_(y=predict(model, queries.x)), group)
    extraction = defense.steal(stolen, held_out, group)
    assert extraction.arch == arch_for(env.dataset, width=env.profile.width)
    assert extraction.arch.norm == "batch"
    norms = [
        type(m) for m in extraction.model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))
    ]
    assert norms and all(kind is nn.BatchNorm2d for kind in norms)


def test_share_of_changed_answers_matches_the_configured_fraction(trained):
    env, model = trained
    api = OutputWatermark({"fraction": 0.05}).apply(model, env)
    x = torch.rand(4000, *env.dataset.input_shape, generator=torch.Generator().manual_seed(1))
    changed = float((predict(api, x) != predict(model, x)).float().mean())
    assert 0.035 < changed < 0.065
    # Unmarked queries get the model's logits untouched.
    marked, _ = keyed_choice(x, watermark_key(env.seed), 0.05, 4)
    with torch.no_grad():
        assert torch.equal(api(x[~marked][:500]), model(x[~marked][:500]))
        assert (api(x[marked]).argmax(1) != model(x[marked]).argmax(1)).all()


def test_answers_are_deterministic_per_query(trained):
    env, model = trained
    api = OutputWatermark().apply(model, env)
    x = env.dataset.test.x
    first = predict(api, x)
    assert torch.equal(first, predict(api, x))
    # Independent of batch composition and order: one query at a time, reversed.
    single = torch.stack([api(x[i : i + 1]).argmax(1)[0] for i in reversed(range(60))]).flip(0)
    assert torch.equal(single, first[:60])
    # A fresh API built from the same seed answers identically (the key is re-derived).
    again = OutputWatermark().apply(model, env)
    assert torch.equal(predict(again, x), first)
    # Another seed's key watermarks other queries.
    other = WatermarkedAPI(model, watermark_key(env.seed + 1), 0.05, 4)
    assert not torch.equal(predict(other, x), first)


def test_input_not_modified_and_measure_on_fresh_instance(trained):
    env, model = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    api = OutputWatermark({"surrogate_epochs": 5}).apply(model, env)
    assert api.model is not model and find_api(api) is api and find_api(model) is None
    assert isinstance(api, ServingWrapper) and weights_of(api) is api.model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    first = OutputWatermark({"surrogate_epochs": 5}).measure(api, env)
    second = OutputWatermark({"surrogate_epochs": 5}).measure(api, env)
    assert first == second
