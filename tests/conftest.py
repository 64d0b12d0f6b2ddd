"""Shared test setup: single-threaded torch (2-core CI), no progress bars."""

from __future__ import annotations

import os

os.environ.setdefault("DEFCON_PROGRESS", "0")

try:
    import torch
except ImportError:  # the checker tests run without torch
    torch = None

if torch is not None:
    torch.set_num_threads(1)


import functools  # noqa: E402

import pytest  # noqa: E402


@functools.lru_cache(maxsize=16)
def _environment(dataset: str, seed: int, profile: str):
    from defcon.engine.data import load_dataset
    from defcon.engine.defense import Environment
    from defcon.planning.profiles import get_profile

    prof = get_profile(profile)
    data = load_dataset(
        dataset, seed=seed, max_train=prof.train_cap(dataset), max_eval=prof.eval_cap(dataset)
    )
    return Environment(dataset=data, seed=seed, profile=prof)


@pytest.fixture(scope="session")
def make_env():
    """make_env(dataset="digits", seed=0, profile="tiny") → a fresh Environment on a small slice.

    The dataset is loaded once per (dataset, seed, profile); each call returns a new Environment
    so tests can set poisoner / train_data / record without affecting each other.
    """
    import dataclasses

    from defcon.engine.training import supply_reference_models

    def make(dataset: str = "digits", seed: int = 0, profile: str = "tiny"):
        env = dataclasses.replace(_environment(dataset, seed, profile), record={})
        return supply_reference_models(env)  # trained on first use, as a script would

    return make


def _fake_record(dataset: str = "digits", defenses=("model_watermark", "explanations")):
    """A minimal composition record (no training): enough for reports and bench summaries."""
    from defcon.effectiveness import Summary
    from defcon.planning.records import CompositionRecord

    accuracy = Summary.of([0.9])
    return CompositionRecord(
        defenses=defenses, order=defenses, dataset=dataset, profile="tiny", seeds=(0,),
        seed_start=0, max_seeds=1, scenario=(), results=(), clean_accuracy_no_defense=accuracy,
        clean_accuracy_combined=accuracy, label="effective",
        predicted={"defcon": "effective", "naive": "effective"}, forced=True, tolerances={},
        versions={}, wall_time_s=1.0,
        cache={"models_trained": 0, "models_reused": 0, "measurements_computed": 0,
               "measurements_reused": 0},
    )  # fmt: skip


@pytest.fixture(scope="session")
def fake_record():
    """fake_record(dataset="digits", defenses=(...)) → a minimal CompositionRecord, no training."""
    return _fake_record


@pytest.fixture(scope="session")
def overfit_digits(make_env):
    """(env, model): a plain model trained 60 epochs on 200 digits, the env's training data;
    a leaky target for membership defenses (RMIA finds its members)."""
    import dataclasses

    from defcon.engine.training import train

    env = make_env()
    members = env.dataset.train.subset(range(200))
    env = dataclasses.replace(env, train_data=members)
    return env, train(env, members, epochs=60).model
