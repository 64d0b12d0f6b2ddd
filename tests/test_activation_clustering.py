"""activation_clustering: the 2-means cluster of the target label's activations that the
defender's clean rows avoid is the poison (a minority of the label or not), so a model trained
on what is left has no backdoor while the undefended one has."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defcon.catalog import builtin_catalog
from defcon.engine.attacks import BadNets
from defcon.engine.defense import Environment
from defcon.engine.models import accuracy
from defcon.engine.registry import make_defense
from defcon.engine.training import train
from defcon.vocabulary import Risk, Stage, Threat
from pipeline_stages.pre_training import poison_filter
from pipeline_stages.pre_training.activation_clustering import (
    ActivationClustering,
    ActivationClusteringConfig,
    label_steps,
    two_clusters,
)


@pytest.fixture(scope="module")
def adult_filtered(make_env):
    env = make_env("adult")
    env.poisoner = BadNets.for_dataset(env.dataset, env.seed)
    env.train_data, chosen = env.poisoner.poison(env.dataset.train, env.seed)
    poisoned = env.train_data
    poison_filter._MEMO.clear()
    filtered = ActivationClustering().apply(poisoned, env)
    return env, chosen, poisoned, filtered


def test_spec_declares_a_pre_training_poisoning_mitigation() -> None:
    spec = builtin_catalog()["activation_clustering"]
    assert spec.stage is Stage.PRE and spec.mitigates == {Risk.POISONING} and not spec.uses
    assert Threat.POISONER in spec.threats and not spec.slots
    judged = {m.name: m.judged for m in spec.metrics}
    assert judged == {"attack_success_rate": True, "poison_removed": False, "clean_removed": False}
    assert all(claim.reference for claim in (*spec.moves, *spec.depends_on))
    assert isinstance(make_defense("activation_clustering"), ActivationClustering)


def test_removes_the_poison_cluster_and_few_clean_rows(adult_filtered) -> None:
    env, chosen, poisoned, filtered = adult_filtered
    kept = np.zeros(len(poisoned), dtype=bool)
    kept[filtered.origins.numpy()] = True
    poison = np.zeros(len(poisoned), dtype=bool)
    poison[chosen.numpy()] = True
    assert 1 - kept[poison].mean() > 0.9
    assert 1 - kept[~poison].mean() < 0.05
    assert torch.equal(filtered.x, poisoned.x[filtered.origins])  # a subset, input untouched
    assert poisoned.origin is None


def test_undefended_model_fails_and_filtered_model_has_no_backdoor(adult_filtered) -> None:
    env, _, poisoned, filtered = adult_filtered
    defense = ActivationClustering()
    plain = train(env, poisoned).model
    defended_env = Environment(
        dataset=env.dataset, seed=env.seed, profile=env.profile, poisoner=env.poisoner,
        train_data=filtered,
    )  # fmt: skip
    defended = train(defended_env, filtered).model
    asr_plain = defense.measure(plain, env)["attack_success_rate"]
    metrics = defense.measure(defended, defended_env)
    assert asr_plain > 0.8  # the metric can fail: the poisoner planted a backdoor
    assert metrics["attack_success_rate"] < 0.2
    assert metrics["poison_removed"] > 0.9 and metrics["clean_removed"] < 0.05
    test = env.dataset.test
    assert accuracy(defended, test.x, test.y) > accuracy(plain, test.x, test.y) - 0.05


def test_clean_gate_keeps_a_natural_small_mode() -> None:
    """Two unbalanced clean modes: the paper's rule removes the small one; with clean rows of
    the same population in hand, the gate keeps it (clean data has that mode too)."""
    rng = np.random.default_rng(0)
    modes = np.concatenate([rng.normal(0, 1, (300, 6)), rng.normal(6, 1, (60, 6))])
    assigned, reducer, kmeans = two_clusters(modes, "pca", 3, seed=0)
    small = int(np.argmin(np.bincount(assigned)))
    assert (assigned == small).sum() == 60  # the paper's rule would call it poison (60/360)
    clean = np.concatenate([rng.normal(0, 1, (50, 6)), rng.normal(6, 1, (10, 6))])
    placed = kmeans.predict(reducer.transform(clean))
    assert np.mean(placed == small) > 0.5 * 60 / 360  # so the default gate keeps it


def test_clean_gate_spares_unpoisoned_data(make_env) -> None:
    """Unpoisoned Adult: whatever modes 2-means finds in a label, the defender's clean rows show
    them too, so the default removes (almost) nothing. Whether the paper's relative-size rule
    alone would cut a natural mode here depends on the trained model's activations, which differ
    in the last bits between CPUs; `test_clean_gate_keeps_a_natural_small_mode` shows that
    contrast on data built to have one."""
    env = make_env("adult")
    clean = env.dataset.train
    gated = len(clean) - len(ActivationClustering().kept_rows(clean, env))
    assert gated < 0.01 * len(clean)


def test_deterministic_for_a_seed(adult_filtered) -> None:
    env, _, poisoned, filtered = adult_filtered
    assert torch.equal(ActivationClustering().kept_rows(poisoned, env), filtered.origins)


def removed_by(rows: np.ndarray, reference: np.ndarray, **settings) -> np.ndarray:
    config = ActivationClusteringConfig(reduction="pca", components=3, **settings)
    steps = label_steps(rows, reference, config, seed=0)
    found = [step.suspect_rows for step in steps if step.removed]
    return np.sort(np.concatenate(found)) if found else np.array([], dtype=int)


def test_poison_that_is_half_of_its_label_is_removed_not_the_clean_half() -> None:
    """Ten balanced labels at a 10 % poisoning rate: the target label holds about as many
    poisoned rows as clean ones. The paper's relative-size rule keeps the poison (no cluster is
    small); the clean rows avoid the poison cluster, so the default removes it and only it."""
    rng = np.random.default_rng(1)
    clean = rng.normal(0, 1, (955, 6))
    poison = rng.normal(5, 1, (1000, 6))
    rows = np.concatenate([clean, poison])
    reference = rng.normal(0, 1, (100, 6))
    assert np.array_equal(removed_by(rows, reference), np.arange(955, 1955))
    assert len(removed_by(rows, reference, clean_ratio=None)) == 0


def test_poison_that_two_means_splits_is_removed_by_splitting_again() -> None:
    """Poison in two separate modes besides the clean one: one split cannot isolate both; the
    rest of the label is split again until the clean rows avoid no cluster."""
    rng = np.random.default_rng(2)
    clean = rng.normal(0, 1, (900, 6))
    poison = np.concatenate([rng.normal(8, 1, (300, 6)), rng.normal(-8, 1, (300, 6))])
    rows = np.concatenate([clean, poison])
    reference = rng.normal(0, 1, (100, 6))
    assert np.array_equal(removed_by(rows, reference), np.arange(900, 1500))
    assert len(removed_by(rows, reference, max_splits=1)) == 300  # one mode only


def test_a_clean_label_with_an_unbalanced_mode_loses_nothing() -> None:
    """The clean rows show both natural modes in proportion: no cluster is avoided."""
    rng = np.random.default_rng(3)
    rows = np.concatenate([rng.normal(0, 1, (300, 6)), rng.normal(6, 1, (60, 6))])
    reference = np.concatenate([rng.normal(0, 1, (50, 6)), rng.normal(6, 1, (10, 6))])
    assert len(removed_by(rows, reference)) == 0
    assert len(removed_by(rows, reference, clean_ratio=None)) == 60  # the paper's rule cuts it


def test_the_split_report_says_where_the_poison_went() -> None:
    """benchmarks/activation_clustering_split.py: one line per split of each poisoned label,
    both reductions and both rules, with how many poisoned rows the judged cluster holds."""
    from benchmark_scripts import load_script

    lines = load_script("activation_clustering_split").split_report("digits", 0, "tiny")
    planted = int(lines[0].split(", ")[1].split()[0])
    assert planted > 0 and lines[0].startswith("digits seed 0:")
    poisoned = [line for line in lines[1:] if f"{planted} poisoned;" in line]
    assert {line.split()[2] for line in poisoned} == {"ica", "pca"}  # the target label
    assert {line.split()[3] for line in poisoned} == {"clean", "paper"}
    for line in poisoned:
        assert int(line.split("holds ")[1].split()[0]) <= planted
