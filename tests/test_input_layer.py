"""Pre-training input layers: the model trains behind a fixed affine layer, is served with it
folded into its first Linear, and the composer fits, trains, caches and serves it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from defcon.catalog import Catalog, builtin_catalog
from defcon.engine.data import Split, from_arrays
from defcon.engine.defense import DefenseConfig, Environment, PreTrainingDefense
from defcon.engine.models import (
    MLP,
    InputLayer,
    WithInputLayer,
    arch_for,
    first_linear,
    fold_input_layer,
    input_layer_problem,
)
from defcon.engine.training import train
from defcon.errors import DefconError
from defcon.measure.composer import Composer
from defcon.planning.profiles import get_profile
from defcon.vocabulary import DefenseSpec

pytestmark = pytest.mark.filterwarnings("ignore")


def _env(make_env) -> Environment:
    env = make_env("compas")
    small = env.dataset.with_train(env.dataset.train.subset(torch.arange(400)))
    return dataclasses.replace(env, dataset=small)


def _random_layer(width: int, seed: int = 0) -> InputLayer:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.eye(width) + 0.1 * torch.randn(width, width, generator=generator)
    return InputLayer(weight, 0.1 * torch.randn(width, generator=generator))


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    one, two = a.state_dict(), b.state_dict()
    return one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_an_identity_layer_trains_exactly_the_plain_model(make_env):
    env = _env(make_env)
    width = env.dataset.train.x.shape[1]
    plain = train(env, env.dataset.train, epochs=1).model
    behind = train(env, env.dataset.train, epochs=1, input_layer=InputLayer(
        torch.eye(width), torch.zeros(width))).model  # fmt: skip
    assert isinstance(behind, MLP) and _same_state(plain, behind)


def test_training_behind_a_layer_is_training_on_transformed_rows(make_env):
    env = _env(make_env)
    split = env.dataset.train
    layer = _random_layer(split.x.shape[1])
    behind = train(env, split, epochs=1, input_layer=layer).model
    moved = _through(layer, split)
    on_moved = train(env, moved, epochs=1).model  # the same seed: same initialisation and batches
    test = env.dataset.test.x
    with torch.no_grad():
        assert torch.allclose(behind.eval()(test), on_moved.eval()(layer(test)), atol=1e-4)


def _through(layer: InputLayer, split: Split) -> Split:
    with torch.no_grad():
        return split.with_(x=layer(split.x))


def test_layers_compose_in_order():
    first, second = _random_layer(5, 1), _random_layer(5, 2)
    x = torch.rand(7, 5)
    with torch.no_grad():
        assert torch.allclose(first.then(second)(x), second(first(x)), atol=1e-6)


class _Scrambled(nn.Module):
    """`features` exists but the forward pass does something else before it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(width, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.flip(1)))


def test_folding_refuses_models_it_cannot_fold():
    layer = _random_layer(6)
    assert input_layer_problem(nn.Sequential(nn.Linear(6, 2)), 6) is not None
    with pytest.raises(DefconError, match="does not start with features"):
        fold_input_layer(WithInputLayer(layer, _Scrambled(6)), torch.rand(16, 6))


class ScaleDown(PreTrainingDefense):
    """A toy pre-training defense whose transform halves every input."""

    Config: ClassVar[type[DefenseConfig]] = DefenseConfig

    def apply(self, train: Split, env: Environment) -> Split:
        return train

    def input_layer(self, train: Split, env: Environment) -> InputLayer:
        width = train.x.shape[1]
        return InputLayer(0.5 * torch.eye(width), torch.zeros(width))

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        return {"half": 0.0}


def test_the_composer_trains_behind_the_layer_and_serves_it_folded(tmp_path: Path):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(300, 4, generator=generator)
    y = (x[:, 0] > 0.5).long()
    data = from_arrays(x[:200], y[:200], x[200:], y[200:], name="toy")
    spec = DefenseSpec(
        name="scale_down", title="halves the inputs", stage="pre", mitigates=["opacity"],
        metrics=[{"name": "half", "direction": "lower", "tolerance": 0.1}],
        implementation=f"{__name__}:ScaleDown",
    )  # fmt: skip
    catalog = Catalog([*builtin_catalog().values(), spec])
    composer = Composer(data, profile="tiny", cache_dir=tmp_path, catalog=catalog)
    result = composer.run_pipeline(composer.pipeline(["scale_down"], 0, False))
    model = result.model
    assert isinstance(model, MLP) and result.env.train_data is result.env.dataset.train
    again = Composer(data, profile="tiny", cache_dir=tmp_path, catalog=catalog)
    cached = again.run_pipeline(again.pipeline(["scale_down"], 0, False)).model
    assert again.cache.reused == 1 and _same_state(model, cached)
    # the served model is the net trained on halved inputs: its first layer saw x / 2
    plain = composer.run_pipeline(composer.pipeline([], 0, False)).model
    assert not _same_state(model, plain)


IN_TRAINING = sorted(
    spec.name for spec in builtin_catalog().values()
    if spec.stage == "in" and spec.implementation and "tabular" in spec.data_kinds
)  # fmt: skip


@pytest.mark.parametrize("name", IN_TRAINING)
def test_every_in_training_defense_trains_behind_a_layer(name, tmp_path: Path):
    """Hooks see the model with its layer (Opacus' wrapper, attacks, a re-initialised head)."""
    from fairness_data import unfair_table

    from defcon.engine.registry import make_defense

    data = unfair_table(tmp_path, rows=400).dataset(0)
    env = Environment(dataset=data, seed=0, profile=get_profile("tiny"))
    env.arch = arch_for(data, width=env.profile.width)
    layer = _random_layer(data.train.x.shape[1])
    trained = train(env, data.train, [make_defense(name)], epochs=1, input_layer=layer).model
    assert not isinstance(trained, WithInputLayer) and first_linear(trained) is not None
