"""Correlation remover: fairlearn's CorrelationRemover fitted on the training split, served as the
model's input layer (equal to fairlearn's transform), refused where it cannot work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fairlearn.preprocessing import CorrelationRemover as Fairlearn
from fairness_data import unfair_table

from defcon.catalog import builtin_catalog
from defcon.engine.data import from_arrays
from defcon.engine.defense import Environment
from defcon.engine.models import MLP, predict
from defcon.engine.registry import make_defense
from defcon.engine.training import train
from defcon.errors import DefconError
from defcon.measure.composer import Composer, applicability_problem
from defcon.planning.profiles import get_profile
from pipeline_stages.in_training.group_fairness import GroupFairness
from pipeline_stages.pre_training.correlation_remover import CorrelationRemover

pytestmark = pytest.mark.filterwarnings("ignore")


def _compas(make_env) -> Environment:
    env = make_env("compas")
    return dataclasses.replace(env, dataset=env.dataset.with_train(env.dataset.train.subset(
        torch.arange(600))))  # fmt: skip


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_the_layer_is_fairlearns_transform(make_env, alpha):
    env = _compas(make_env)
    defense = CorrelationRemover({"alpha": alpha})
    columns = defense.columns(env.dataset)
    race = next(g for g in env.dataset.feature_groups if g.name == "race")
    assert columns == race.columns  # the feature group named like the sensitive attribute
    train = env.dataset.train
    reference = Fairlearn(sensitive_feature_ids=list(columns), alpha=alpha)
    expected = reference.fit(train.x.double().numpy()).transform(env.dataset.test.x.numpy())
    with torch.no_grad():
        served = defense.input_layer(train, env)(env.dataset.test.x)
    others = [i for i in range(train.x.shape[1]) if i not in columns]
    np.testing.assert_allclose(served[:, others].numpy(), expected, atol=1e-5)
    assert torch.count_nonzero(served[:, list(columns)]) == 0  # dropped, shape kept


def test_fairlearn_is_fitted_on_the_training_split(make_env, monkeypatch):
    env = _compas(make_env)
    seen = []
    original = Fairlearn.fit

    def spy(self, X, y=None):  # noqa: N803
        seen.append((type(self), np.array(X)))
        return original(self, X, y)

    monkeypatch.setattr(Fairlearn, "fit", spy)
    train = env.dataset.train.subset(torch.arange(300))
    CorrelationRemover().input_layer(train, env)
    ((cls, fitted_on),) = seen
    assert cls is Fairlearn and np.array_equal(fitted_on, train.x.double().numpy())


def test_apply_keeps_the_split_and_the_layer_is_deterministic(make_env):
    env = _compas(make_env)
    train = env.dataset.train
    snapshot = train.x.clone()
    defense = make_defense("correlation_remover")
    assert defense.apply(train, env) is train and torch.equal(train.x, snapshot)
    first, second = defense.input_layer(train, env), defense.input_layer(train, env)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert torch.equal(train.x, snapshot)


def test_metric_is_group_fairness_metric(make_env):
    env = _compas(make_env)
    model = train(env, env.dataset.train, epochs=1).model
    ours = CorrelationRemover().measure(model, env)
    assert ours == GroupFairness().measure(model, env)


def test_the_composer_serves_the_trained_model_behind_the_transform(tmp_path: Path):
    data = unfair_table(tmp_path)
    composer = Composer(data, profile="tiny", cache_dir=tmp_path / "cache")
    result = composer.run_pipeline(composer.pipeline(["correlation_remover"], 0, False))
    env, model = result.env, result.model
    assert isinstance(model, MLP)  # folded: a plain model of the dataset's architecture
    assert env.train_data is env.dataset.train and len(env.members) == len(env.dataset.train)
    # the same function as the network trained behind fairlearn's transform: re-train by hand
    defense = make_defense("correlation_remover")
    layer = defense.input_layer(env.dataset.train, env)
    behind = train(env, env.dataset.train, input_layer=layer).model
    test = env.dataset.test.x
    assert torch.equal(predict(model, test), predict(behind, test))
    metrics = composer.measure(result, defense)
    assert set(metrics) == {"equalized_odds_difference"} and 0 <= metrics[
        "equalized_odds_difference"] <= 1  # fmt: skip


def test_refusals(make_env):
    spec = builtin_catalog()["correlation_remover"]
    digits = make_env("digits").dataset
    assert "tabular data only" in applicability_problem(spec, digits)
    x = np.random.default_rng(0).random((40, 3))
    y = np.arange(40) % 2
    no_attribute = from_arrays(x, y, x, y, name="plain").dataset(0)
    assert "needs a sensitive attribute" in applicability_problem(spec, no_attribute)
    defense = CorrelationRemover()
    with pytest.raises(DefconError, match="needs a sensitive attribute"):
        defense.columns(no_attribute)
    # the attribute exists but is not among the inputs: say which setting names its columns
    hidden = from_arrays(x, y, x, y, s_train=y, s_test=y, name="hidden").dataset(0)
    assert "sensitive_columns" in defense.model_problem(_mlp_for(hidden), hidden)
    assert CorrelationRemover({"sensitive_columns": [2]}).columns(hidden) == (2,)
    # a model the layer cannot be folded into is refused before training
    compas = make_env("compas").dataset
    assert "features[0]" in defense.model_problem(torch.nn.Sequential(torch.nn.Flatten()), compas)


def _mlp_for(dataset) -> torch.nn.Module:
    from defcon.engine.models import arch_for, build_model

    return build_model(arch_for(dataset, width=get_profile("tiny").width), 0)


def test_conformance_covers_it():
    from test_conformance import RUNNABLE

    assert "correlation_remover" in {spec.name for spec in RUNNABLE}
