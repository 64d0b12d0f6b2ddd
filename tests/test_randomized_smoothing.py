"""Randomized smoothing: Cohen et al.'s certification math, the undefended model failing the metric
where the noise-trained one passes, determinism, and its place in the catalog and the loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from scipy.stats import beta, norm
from test_adversarial_training import _run  # a TrainingRun around a fresh model
from torch import nn

from defcon.catalog import builtin_catalog
from defcon.checker.base import structural_clashes
from defcon.engine.defense import contract_problems
from defcon.engine.models import accuracy, arch_for, build_model
from defcon.engine.registry import defense_class
from defcon.engine.registry import make_defense as make
from defcon.engine.training import train
from pipeline_stages.in_training.dp_sgd import DPSGD, EPSILON_KEY
from pipeline_stages.in_training.randomized_smoothing import (
    ABSTAIN,
    RandomizedSmoothing,
    certify_counts,
    clopper_pearson_lower,
)

pytestmark = pytest.mark.filterwarnings("ignore")
ALPHA = 0.001


@pytest.fixture(scope="module")
def trained(make_env):
    """digits (tiny profile): a plain model and a noise-trained one (σ = 0.25)."""
    env = make_env()
    return (
        env,
        train(env, env.dataset.train),
        train(env, env.dataset.train, [RandomizedSmoothing()]),
    )


# ---------------------------------------------------------------------- certification math


def test_clopper_pearson_is_the_beta_quantile_and_exact_at_the_ends():
    for successes, trials in ((90, 100), (233, 256), (1, 10), (50, 50)):
        expected = beta.ppf(ALPHA, successes, trials - successes + 1)
        assert clopper_pearson_lower(successes, trials, ALPHA) == pytest.approx(expected, abs=1e-9)
    assert clopper_pearson_lower(0, 100, ALPHA) == 0.0
    # all n votes: P(X = n | p) = p^n = α at the bound
    assert clopper_pearson_lower(100, 100, ALPHA) == pytest.approx(ALPHA ** (1 / 100))


def test_certify_counts_radius_and_abstention():
    sigma = 0.25
    selection = torch.tensor([0, 3, 29, 0])
    unanimous = torch.tensor([0, 0, 256, 0])
    label, radius = certify_counts(selection, unanimous, sigma, ALPHA)
    assert label == 2
    assert radius == pytest.approx(sigma * norm.ppf(ALPHA ** (1 / 256)))  # ≈ 0.48
    # p_A's lower bound under 1/2: abstain
    assert certify_counts(selection, torch.tensor([0, 136, 120, 0]), sigma, ALPHA) == (ABSTAIN, 0.0)
    # the class comes from the selection votes, its probability from the estimation votes
    assert certify_counts(torch.tensor([0, 30, 2, 0]), unanimous, sigma, ALPHA) == (ABSTAIN, 0.0)


def test_radius_sigma_needs_233_of_256_votes():
    """Radius ≥ σ ⇔ p_A's bound ≥ Φ(1) ≈ 0.841: at α = 0.001 and n = 256, 233 votes, not 232."""
    selection = torch.tensor([32, 0])
    below = certify_counts(selection, torch.tensor([232, 24]), 0.25, ALPHA)
    above = certify_counts(selection, torch.tensor([233, 23]), 0.25, ALPHA)
    assert below[0] == above[0] == 0
    assert 0 < below[1] < 0.25 <= above[1]


# ---------------------------------------------------------------------- effectiveness


def test_undefended_model_fails_the_noise_trained_one_passes(trained):
    env, plain, smoothed = trained
    defense = RandomizedSmoothing()
    certified_plain = defense.measure(plain.model, env)["certified_accuracy"]
    certified = defense.measure(smoothed.model, env)["certified_accuracy"]
    assert certified >= certified_plain + 0.2, (certified_plain, certified)
    assert accuracy(smoothed.model, env.dataset.test.x, env.dataset.test.y) >= 0.85


def test_undefended_model_fails_on_tabular_data(make_env):
    env = make_env("compas")
    defense = RandomizedSmoothing()
    plain = defense.measure(train(env, env.dataset.train).model, env)["certified_accuracy"]
    smoothed = train(env, env.dataset.train, [RandomizedSmoothing()])
    certified = defense.measure(smoothed.model, env)["certified_accuracy"]
    assert certified >= plain + 0.15, (plain, certified)


def test_certified_accuracy_falls_with_the_radius_and_a_constant_model_scores_one_over_classes(
    trained,
):
    env, _, smoothed = trained
    readings = [
        RandomizedSmoothing({"radius": r}).measure(smoothed.model, env)["certified_accuracy"]
        for r in (0.0, 0.25, 0.5)
    ]
    assert readings[0] >= readings[1] >= readings[2]  # same points, same noise draws
    assert readings[2] == 0.0  # beyond the largest radius 128 samples can certify (≈ 0.41)

    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(len(x), env.dataset.num_classes)
            logits[:, 3] = 1.0
            return logits

    constant = RandomizedSmoothing().measure(Constant(), env)["certified_accuracy"]
    assert constant == pytest.approx(1 / env.dataset.num_classes)


def test_measure_is_reproducible_and_leaves_the_model_untouched(trained):
    env, plain, _ = trained
    first = RandomizedSmoothing().measure(plain.model, env)
    reloaded = build_model(plain.arch, seed=123)
    reloaded.load_state_dict(copy.deepcopy(plain.model.state_dict()))
    reloaded.train()
    state = copy.deepcopy(reloaded.state_dict())
    assert RandomizedSmoothing().measure(reloaded, env) == first
    assert reloaded.training  # mode restored
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items())
    assert set(first) == {m.name for m in RandomizedSmoothing().spec.metrics}


# ---------------------------------------------------------------------- training


def test_noisy_batch_is_seeded_per_run_and_leaves_the_input_untouched(make_env):
    env = make_env()
    x, y, s = env.dataset.train.tensors()
    x, y, s = x[:256], y[:256], s[:256]
    before = x.clone()
    first = RandomizedSmoothing({"sigma": 0.5}).transform_batch(_fresh_run(env), x, y, s)
    again = RandomizedSmoothing({"sigma": 0.5}).transform_batch(_fresh_run(env), x, y, s)
    assert torch.equal(x, before)
    assert torch.equal(first[0], again[0]) and first[1] is y and first[2] is s
    noise = first[0] - x
    assert abs(float(noise.std()) - 0.5) < 0.02 and abs(float(noise.mean())) < 0.02
    defense = RandomizedSmoothing({"sigma": 0.5})
    run = _fresh_run(env)
    assert torch.equal(defense.transform_batch(run, x, y, s)[0], first[0])
    second_batch = defense.transform_batch(run, x, y, s)[0]
    assert not torch.equal(second_batch, first[0])  # the generator runs on within a run
    other_seed = RandomizedSmoothing({"sigma": 0.5}).transform_batch(
        _fresh_run(make_env(seed=1)), x, y, s
    )
    assert not torch.equal(other_seed[0], first[0])


def test_trains_inside_dp_sgd_in_one_loop(make_env):
    env = make_env()
    both = train(env, env.dataset.train, [DPSGD(), RandomizedSmoothing()], epochs=1)
    private = train(env, env.dataset.train, [DPSGD()], epochs=1)
    assert both.record[EPSILON_KEY] == private.record[EPSILON_KEY] > 0  # noise costs no privacy
    weights = zip(
        both.model.state_dict().values(), private.model.state_dict().values(), strict=True
    )
    assert any(not torch.equal(a, b) for a, b in weights)
    assert not hasattr(both.model, "_module")  # the plain model comes back


# ---------------------------------------------------------------------- catalog


def test_catalog_declaration_and_conformance_coverage():
    spec = builtin_catalog()["randomized_smoothing"]
    assert contract_problems(defense_class(spec.name), spec) == []
    assert isinstance(make("randomized_smoothing", {"sigma": 0.5}), RandomizedSmoothing)
    from test_conformance import RUNNABLE  # parametrised over the catalog

    assert spec in RUNNABLE
    assert all(claim.reference and claim.reason for claim in (*spec.moves, *spec.depends_on))
    # batch_transform is exclusive: adversarial training (PGD) cannot share the loop
    clashes = structural_clashes([spec, builtin_catalog()["adversarial_training"]])
    assert [str(c.slot) for c in clashes] == ["batch_transform"]
    assert math.isclose(RandomizedSmoothing().config.radius, 0.25)


def _fresh_run(env):
    """A TrainingRun around a freshly built model of the environment's architecture."""
    return _run(env, build_model(arch_for(env.dataset, width=env.profile.width), env.seed))
