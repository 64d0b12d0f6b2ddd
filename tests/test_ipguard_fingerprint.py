"""IPGuard: a stolen copy matches the owner's boundary fingerprint, an independent model does not."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from defcon.engine.models import predict
from defcon.engine.training import train
from defcon.errors import DefconError
from pipeline_stages.post_training.ipguard_fingerprint import (
    IPGuardFingerprint,
    ipguard_objective,
    movable_columns,
)


@functools.lru_cache(maxsize=1)
def _owner(make_env):
    env = make_env("adult")
    return env, train(env, env.dataset.train).model


def test_stolen_copy_matches_and_independent_model_does_not(make_env):
    env, owner = _owner(make_env)
    defense = IPGuardFingerprint()
    deployed = dataclasses.replace(env, deployed=frozenset({"ipguard_fingerprint"}))
    stolen = defense.measure(defense.apply(owner, deployed), deployed)["fingerprint_match"]
    independent = defense.measure(owner, env)["fingerprint_match"]  # not deployed
    assert stolen >= independent + 0.2, (stolen, independent)
    extract = IPGuardFingerprint({"thief": "extract"})
    assert 0 <= extract.measure(owner, deployed)["fingerprint_match"] <= 1  # the audit's thief


def test_fingerprint_is_valid_records_across_the_owners_boundary(make_env):
    env, owner = _owner(make_env)
    x, labels = IPGuardFingerprint().fingerprint(owner, env)
    assert len(x) == 200 and torch.equal(predict(owner, x), labels)
    train_x = env.dataset.train.x
    fixed = ~movable_columns(env.dataset)
    starts = {tuple(row) for row in train_x[:, fixed].tolist()}
    assert all(tuple(row) in starts for row in x[:, fixed].tolist())  # categories untouched
    assert bool((x >= train_x.min(0).values).all() and (x <= train_x.max(0).values).all())
    again, _ = IPGuardFingerprint().fingerprint(owner, env)
    assert torch.equal(x, again)  # re-derivable from the model and the seed


def test_objective_is_zero_once_the_target_leads_by_the_margin():
    logits = torch.tensor([[2.0, 2.6, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 2.5]])
    own, target = torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1])
    values = ipguard_objective(logits, own, target, margin=0.5)
    assert values[0] == 0 and values[1] == pytest.approx(1.5)
    assert values[2] == pytest.approx(2.5)  # class 2 outranks the start class i


def test_search_that_finds_too_few_points_says_what_to_raise(make_env):
    env, owner = _owner(make_env)
    with pytest.raises(DefconError, match="raise candidates"):
        IPGuardFingerprint({"steps": 1, "step": 1e-6}).fingerprint(owner, env)
