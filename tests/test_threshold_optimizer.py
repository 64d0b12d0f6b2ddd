"""Threshold optimizer: fairlearn's ThresholdOptimizer fitted on held data (never test data) around the model,
served as an API whose answers are fairlearn's randomised rule with a keyed draw per query."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from fairlearn.postprocessing import ThresholdOptimizer as Fairlearn
from fairness_data import unfair_table

from defcon.catalog import builtin_catalog
from defcon.engine.data import from_arrays, load_dataset
from defcon.engine.defense import Environment, weights_of
from defcon.engine.models import accuracy, predict
from defcon.engine.registry import make_defense
from defcon.engine.training import train
from defcon.errors import DefconError
from defcon.measure.composer import Composer, applicability_problem
from defcon.planning.profiles import get_profile
from pipeline_stages.fairness import equalized_odds_gap
from pipeline_stages.post_training.threshold_optimizer import (
    FairThresholds,
    ThresholdOptimizer,
    keyed_uniform,
    margin,
)

pytestmark = pytest.mark.filterwarnings("ignore")


@functools.lru_cache(maxsize=1)
def _trained(dataset: str = "compas") -> tuple[Environment, torch.nn.Module]:
    from conftest import _environment

    env = dataclasses.replace(_environment(dataset, 0, "tiny"), record={})
    return env, train(env, env.dataset.train, epochs=2).model


def _setup() -> tuple[Environment, torch.nn.Module]:
    env, model = _trained()
    return dataclasses.replace(env, record={}), model


def _fitted_on(monkeypatch, defense: ThresholdOptimizer, env: Environment, model):
    """What fairlearn's `fit` received: (params, X, y, sensitive_features)."""
    seen = []
    original = Fairlearn.fit

    def spy(self, X, y, *, sensitive_features, **kwargs):  # noqa: N803
        seen.append((self.get_params(deep=False), X, y, sensitive_features))
        return original(self, X, y, sensitive_features=sensitive_features, **kwargs)

    monkeypatch.setattr(Fairlearn, "fit", spy)
    defense.apply(model, env)
    (fitted,) = seen
    return fitted


def test_fairlearn_is_fitted_on_training_and_validation_records(monkeypatch):
    """By default on the clean training records and the validation split, never test data
    (when the model is not overfit: its accuracy the same on both)."""
    import pipeline_stages.post_training.threshold_optimizer as module

    env, model = _setup()
    monkeypatch.setattr(module, "accuracy", lambda m, x, y: 0.8)
    params, x, y, s = _fitted_on(monkeypatch, ThresholdOptimizer(), env, model)
    assert params["constraints"] == "equalized_odds" and params["prefit"] is True
    assert params["predict_method"] == "decision_function"
    both = env.dataset.train.concat(env.dataset.val)
    assert np.array_equal(x, both.x.numpy()) and np.array_equal(y, both.y.numpy())
    assert np.array_equal(s, both.s.numpy())
    assert env.record["threshold_optimizer.fitted_on_validation_only"] == 0.0


def test_an_overfit_model_is_fitted_on_the_validation_split_only(monkeypatch):
    """Scores on records the model memorised are optimistic: the validation split alone, and
    the record says so; `fit_on="validation"` always fits there."""
    import pipeline_stages.post_training.threshold_optimizer as module

    env, model = _setup()
    train, val = env.dataset.train, env.dataset.val
    monkeypatch.setattr(module, "accuracy", lambda m, x, y: 0.99 if len(y) == len(train) else 0.8)
    _, x, y, s = _fitted_on(monkeypatch, ThresholdOptimizer(), env, model)
    assert np.array_equal(x, val.x.numpy()) and np.array_equal(y, val.y.numpy())
    assert np.array_equal(s, val.s.numpy())
    assert env.record["threshold_optimizer.fitted_on_validation_only"] == 1.0
    assert env.record["threshold_optimizer.overfit_gap"] == pytest.approx(0.19)

    env, model = _setup()
    monkeypatch.setattr(module, "accuracy", lambda m, x, y: 0.8)  # not overfit, yet asked
    only_val = ThresholdOptimizer({"fit_on": "validation"})
    _, x, _, _ = _fitted_on(monkeypatch, only_val, env, model)
    assert np.array_equal(x, val.x.numpy())


def test_answers_are_fairlearns_rule_with_the_keyed_draw():
    env, model = _setup()
    defense = ThresholdOptimizer()
    served = defense.apply(model, env)
    assert isinstance(served, FairThresholds) and weights_of(served) is served.model
    fitted = defense.fit(copy.deepcopy(model).eval(), env)
    test = env.dataset.test
    assert torch.equal(served.reader(test.x), test.s)  # the group read from the inputs
    chance = fitted._pmf_predict(test.x.numpy(), sensitive_features=test.s.numpy())[:, 1]
    draws = keyed_uniform(test.x, defense.key(env), defense.config.decimals).numpy()
    assert np.array_equal(predict(served, test.x).numpy(), (chance >= draws).astype(np.int64))
    assert (chance > 0).any() and (chance < 1).any()  # not a constant answer


def test_served_margins_keep_the_models_gradients():
    env, model = _setup()
    served = ThresholdOptimizer().apply(model, env)
    x = env.dataset.test.x[:64].clone().requires_grad_(True)
    logits = served(x)
    (gradient,) = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), x)
    x_model = x.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(margin(served.model, x_model).sum(), x_model)
    scored = served.threshold(x.detach()).isfinite()  # coin-flip answers ignore the input
    assert scored.any()
    torch.testing.assert_close(gradient[scored], expected[scored])
    assert torch.count_nonzero(gradient[~scored]) == 0


def test_input_kept_answers_deterministic_and_independent_of_the_batch():
    env, model = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    defense = make_defense("threshold_optimizer")
    served, again = defense.apply(model, env), defense.apply(model, env)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = env.dataset.test.x
    answers = predict(served, x)
    assert torch.equal(answers, predict(again, x))
    assert torch.equal(answers[:37], predict(served, x[:37]))
    assert torch.equal(answers[5:9], predict(served, x[[5, 6, 7, 8]]))
    other_seed = dataclasses.replace(env, seed=1)
    assert defense.key(other_seed) != defense.key(env)


def test_equalises_the_rates_where_it_was_fitted():
    env, model = _setup()
    served = ThresholdOptimizer().apply(model, env)
    val = env.dataset.val
    assert equalized_odds_gap(served, val) < min(0.05, equalized_odds_gap(model, val))


def test_metric_is_group_fairness_metric():
    from pipeline_stages.in_training.group_fairness import GroupFairness

    env, model = _setup()
    assert ThresholdOptimizer().measure(model, env) == GroupFairness().measure(model, env)


def test_compose_refuses_the_correlation_remover_on_tabular_data(tmp_path: Path):
    """Declared not applicable to tabular data (a linear remover in front of an MLP)."""
    data = unfair_table(tmp_path)
    composer = Composer(data, profile="tiny", cache_dir=tmp_path / "cache")
    with pytest.raises(DefconError, match="'correlation_remover' is not applicable to tabular"):
        composer.compose(["threshold_optimizer", "correlation_remover"], seeds=1)


def test_refusals(make_env):
    spec = builtin_catalog()["threshold_optimizer"]
    assert "tabular data only" in applicability_problem(spec, make_env("digits").dataset)
    x = np.random.default_rng(0).random((60, 3))
    y = np.arange(60) % 3
    no_attribute = from_arrays(x, y % 2, x, y % 2, name="plain").dataset(0)
    assert "needs a sensitive attribute" in applicability_problem(spec, no_attribute)
    with pytest.raises(DefconError, match="needs a sensitive attribute"):
        ThresholdOptimizer().measure(torch.nn.Linear(3, 2), Environment(
            dataset=no_attribute, seed=0, profile=get_profile("tiny")))  # fmt: skip
    three = from_arrays(x, y, x, y, s_train=y % 2, s_test=y % 2, name="three").dataset(0)
    assert "binary" in ThresholdOptimizer({"sensitive_columns": [0]}).model_problem(
        torch.nn.Linear(3, 3), three)  # fmt: skip


def test_conformance_covers_it():
    from test_conformance import RUNNABLE

    assert "threshold_optimizer" in {spec.name for spec in RUNNABLE}


@pytest.mark.slow
def test_lowers_the_equalized_odds_gap_on_adult():
    """Three seeds on 8,000 Adult rows, the full test split: the gap falls, accuracy holds."""
    profile = get_profile("tiny").model_copy(
        update={"lr": 2e-3, "batch_size": 128, "epochs": {"default": 5}}
    )
    plain, fair = [], []
    for seed in (0, 1, 2):
        env = Environment(
            dataset=load_dataset("adult", seed=seed, max_train=8000), seed=seed, profile=profile
        )
        model = train(env, env.dataset.train).model
        served = ThresholdOptimizer().apply(model, env)
        test = env.dataset.test
        plain.append((equalized_odds_gap(model, test), accuracy(model, test.x, test.y)))
        fair.append((equalized_odds_gap(served, test), accuracy(served, test.x, test.y)))
    assert np.mean([g for g, _ in fair]) <= np.mean([g for g, _ in plain]) - 0.03, (plain, fair)
    assert all(f[1] >= p[1] - 0.03 for p, f in zip(plain, fair, strict=True))


def test_the_record_keeps_which_records_it_was_fitted_on(tmp_path: Path):
    """The facts a defended arm's post-training recorded reach the composition record, per arm:
    a reader sees whether the optimizer fitted on training + validation records or on validation
    only (the undefended arm's facts stay where they were)."""
    data = unfair_table(tmp_path)
    composer = Composer(data, profile="tiny", cache_dir=tmp_path / "cache")
    record = composer.compose(["threshold_optimizer", "model_watermark"], seeds=2)
    for arm in ("threshold_optimizer", "combined"):
        facts = record.defended_facts[arm]
        fitted = facts["threshold_optimizer.fitted_on_validation_only"]
        assert fitted.mean in (0.0, 0.5, 1.0) and len(fitted.raw()) == 2
        assert "threshold_optimizer.overfit_gap" in facts
    assert "threshold_optimizer.overfit_gap" not in record.defended_facts.get("model_watermark", {})
    assert not any(k.startswith("threshold_optimizer.") for k in record.undefended_facts)
