"""poison_filter: the spectral-signature filter removes most of a BadNets poisoner's rows with few
clean ones, so a model trained on what is left has no backdoor while the undefended one has."""

from __future__ import annotations

import math

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
from pipeline_stages.pre_training import poison_filter as module
from pipeline_stages.pre_training.poison_filter import PoisonFilter


def _poisoned_env(make_env, dataset: str = "digits") -> tuple[Environment, torch.Tensor]:
    env = make_env(dataset)
    env.poisoner = BadNets.for_dataset(env.dataset, env.seed)
    env.train_data, chosen = env.poisoner.poison(env.dataset.train, env.seed)
    return env, chosen


def _shares(kept: torch.Tensor, chosen: torch.Tensor, rows: int) -> tuple[float, float]:
    """(share of poisoned rows removed, share of clean rows removed)."""
    poisoned = np.zeros(rows, dtype=bool)
    poisoned[chosen.numpy()] = True
    present = np.zeros(rows, dtype=bool)
    present[kept.numpy()] = True
    return float(1 - present[poisoned].mean()), float(1 - present[~poisoned].mean())


@pytest.fixture(scope="module")
def digits_filtered(make_env):
    env, chosen = _poisoned_env(make_env)
    poisoned = env.train_data
    module._MEMO.clear()
    filtered = PoisonFilter().apply(poisoned, env)
    return env, chosen, poisoned, filtered


def test_spec_declares_a_pre_training_poisoning_mitigation() -> None:
    spec = builtin_catalog()["poison_filter"]
    assert spec.stage is Stage.PRE and spec.mitigates == {Risk.POISONING} and not spec.uses
    assert Threat.POISONER in spec.threats and not spec.slots
    judged = {m.name: m.judged for m in spec.metrics}
    assert judged == {"attack_success_rate": True, "poison_removed": False, "clean_removed": False}
    assert all(claim.reference for claim in (*spec.moves, *spec.depends_on))
    assert isinstance(make_defense("poison_filter"), PoisonFilter)


def test_removes_most_poison_and_few_clean_rows(digits_filtered) -> None:
    env, chosen, poisoned, filtered = digits_filtered
    kept = filtered.origins
    removed_poison, removed_clean = _shares(kept, chosen, len(poisoned))
    assert removed_poison > 0.8  # digits (8 × 8, ~18 clean rows per label) is the hard case
    assert removed_clean < 0.1
    # measure reports the same shares from the provenance of the data the model was trained on
    env.train_data = filtered
    model = train(env, filtered, epochs=1).model
    metrics = PoisonFilter().measure(model, env)
    assert metrics["poison_removed"] == pytest.approx(removed_poison)
    assert metrics["clean_removed"] == pytest.approx(removed_clean)


def test_output_is_a_subset_with_provenance_and_the_input_is_untouched(digits_filtered) -> None:
    env, _, poisoned, filtered = digits_filtered
    again, _ = env.poisoner.poison(env.dataset.train, env.seed)
    assert torch.equal(poisoned.x, again.x) and torch.equal(poisoned.y, again.y)
    assert poisoned.origin is None  # nothing was attached to the input either
    rows = filtered.origins  # the input had no provenance: row i is record i
    assert len(filtered) < len(poisoned) and torch.equal(rows, rows.unique())
    assert torch.equal(filtered.x, poisoned.x[rows]) and torch.equal(filtered.y, poisoned.y[rows])


def test_deterministic_for_a_seed(digits_filtered) -> None:
    env, _, poisoned, filtered = digits_filtered
    module._MEMO.clear()  # recompute, not recall
    again = PoisonFilter().kept_rows(poisoned, env)
    assert torch.equal(again, filtered.origins)


def test_undefended_model_fails_and_filtered_model_has_no_backdoor(digits_filtered) -> None:
    env, _, poisoned, filtered = digits_filtered
    defense = PoisonFilter()
    plain = train(env, poisoned).model
    defended = train(env, filtered).model
    asr_plain = defense.measure(plain, env)["attack_success_rate"]
    asr_defended = defense.measure(defended, env)["attack_success_rate"]
    assert asr_plain > 0.7  # the metric can fail: the poisoner planted a backdoor
    assert asr_defended < 0.15
    test = env.dataset.test
    assert accuracy(defended, test.x, test.y) > accuracy(plain, test.x, test.y) - 0.05


def test_diagnostics_without_filtering_or_without_poisoner(digits_filtered) -> None:
    env, _, poisoned, _ = digits_filtered
    model = train(env, poisoned, epochs=1).model
    unfiltered = Environment(
        dataset=env.dataset, seed=env.seed, profile=env.profile, poisoner=env.poisoner,
        train_data=poisoned,
    )  # fmt: skip
    metrics = PoisonFilter().measure(model, unfiltered)
    assert metrics["poison_removed"] == 0.0 and metrics["clean_removed"] == 0.0
    clean_env = Environment(dataset=env.dataset, seed=env.seed, profile=env.profile)
    metrics = PoisonFilter().measure(model, clean_env)
    assert math.isnan(metrics["poison_removed"]) and metrics["clean_removed"] == 0.0
    # the ASR falls back to the dataset's default poisoner, as the other backdoor defenses do
    assert (
        metrics["attack_success_rate"] == PoisonFilter().measure(model, env)["attack_success_rate"]
    )


def test_budget_follows_the_label_growth_or_the_papers_fixed_rate() -> None:
    estimated = PoisonFilter()
    # 1000 rows of 5000 where the clean rows say 10 %: 500 expected poisoned, 1.5 × 500 removed
    assert estimated.budget(rows=1000, total=5000, reference=100, clean_total=1000) == 750
    assert estimated.budget(rows=400, total=5000, reference=100, clean_total=1000) == 0
    # a growth of 50 rows is within two standard errors (2 × 47) of the clean share's estimate
    assert estimated.budget(rows=550, total=5000, reference=100, clean_total=1000) == 0
    assert estimated.budget(rows=400, total=5000, reference=1, clean_total=1000) == 0
    paper = PoisonFilter({"expected_rate": 0.1})
    assert paper.budget(rows=400, total=5000, reference=100, clean_total=1000) == 60


def test_tabular_poison_is_removed(make_env) -> None:
    env, chosen = _poisoned_env(make_env, "adult")
    kept = PoisonFilter().kept_rows(env.train_data, env)
    removed_poison, removed_clean = _shares(kept, chosen, len(env.train_data))
    assert removed_poison > 0.8
    assert removed_clean < 0.1
