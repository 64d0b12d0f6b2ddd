"""The one-run canary audit: planting, the audited bound on a model that memorised its canaries
and on one that did not, and the audit in a dp_sgd measurement of every arm."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from defcon.engine.canaries import Canaries, audited_epsilon, plant_canaries
from defcon.engine.data import Split
from defcon.measure.composer import Composer
from defcon.measure.standalone import measure_standalone
from defcon.planning.profiles import MembershipRegime, get_profile


def _split(rows: int, classes: int = 3) -> Split:
    x = torch.arange(rows, dtype=torch.float32).reshape(-1, 1)
    return Split(x, torch.arange(rows) % classes)


def _rows_of(split: Split) -> list[float]:
    return split.x[:, 0].tolist()  # each test record's input is its own row number


def test_planting_relabels_keeps_about_half_and_drops_the_rest() -> None:
    """Without a reserve, canaries replace training records (at most a fifth of them)."""
    train = _split(1000)
    planted, canaries = plant_canaries(train, 100, 3, seed=0)
    assert len(canaries) == 100 and 30 < canaries.included.sum() < 70
    assert len(planted) == 1000 - 100 + int(canaries.included.sum())
    source = [int(v) for v in _rows_of(canaries.split)]
    original = train.y[torch.as_tensor(source)]
    assert bool((canaries.split.y != original).all())  # every canary carries a wrong label
    trained = _rows_of(planted)
    for row, inside in zip(source, canaries.included, strict=True):
        copies = trained.count(float(row))
        assert copies == (1 if inside else 0)  # relabelled when kept, gone when excluded
    assert len(planted.unchanged_rows(train)) == 900  # canaries are never members
    assert bool((canaries.split.origins == -1).all())  # each canary is its own person
    again, same = plant_canaries(train, 100, 3, seed=0)
    assert torch.equal(again.x, planted.x) and np.array_equal(same.included, canaries.included)
    assert len(plant_canaries(train, 10_000, 3, seed=0)[1]) == 200  # at most a fifth


def test_canaries_from_the_reserve_are_added_and_leave_the_training_records_alone() -> None:
    train, reserve = (
        _split(1000),
        Split(torch.arange(5000, 5300.0).reshape(-1, 1), torch.zeros(300, dtype=torch.long)),
    )
    planted, canaries = plant_canaries(train, 100, 3, seed=0, reserve=reserve)
    assert len(planted) == 1000 + int(canaries.included.sum())
    assert torch.equal(planted.x[:1000], train.x) and torch.equal(planted.y[:1000], train.y)
    assert len(planted.unchanged_rows(train)) == 1000  # every owner's record is still a member
    assert all(row >= 5000 for row in _rows_of(canaries.split))  # drawn from the reserve
    assert bool((canaries.split.y != 0).all())  # with a wrong label
    added = sorted(_rows_of(planted)[1000:])
    kept = sorted(r for r, i in zip(_rows_of(canaries.split), canaries.included, strict=True) if i)
    assert added == kept  # only the included half reaches training
    small = Split(reserve.x[:50], reserve.y[:50])  # too small a reserve: back to replacing
    assert len(plant_canaries(train, 100, 3, seed=0, reserve=small)[0]) < 1000 + 50


class _Table(nn.Module):
    """Logits looked up by row index (inputs are one-hot rows): a model whose answers we set."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.logits


def _canaries(count: int) -> Canaries:
    rng = np.random.default_rng(1)
    return Canaries(
        Split(torch.eye(count), torch.as_tensor(rng.integers(0, 2, count))),
        rng.random(count) < 0.5,
    )


def test_the_audit_finds_memorised_canaries_and_nothing_in_a_model_that_ignores_them() -> None:
    canaries = _canaries(400)
    labels = canaries.split.y
    memorised = torch.zeros(400, 2)
    rows = torch.arange(400)
    inside = torch.as_tensor(canaries.included)
    # included canaries: the planted label is confident; excluded: the other label is
    memorised[rows[inside], labels[inside]] = 5.0
    memorised[rows[~inside], 1 - labels[~inside]] = 5.0
    found = audited_epsilon(_Table(memorised), canaries, delta=1e-5)
    assert found > 2.0
    ignorant = audited_epsilon(_Table(torch.zeros(400, 2)), canaries, delta=1e-5)
    assert ignorant == 0.0
    assert math.isnan(audited_epsilon(_Table(memorised), None, delta=1e-5))  # not audited


def test_every_arm_of_a_dp_sgd_measurement_is_audited(tmp_path) -> None:
    profile = get_profile("tiny").model_copy(
        update={"membership": {"digits": MembershipRegime(max_train=400, epochs=4, canaries=80)}}
    )
    composer = Composer("digits", profile=profile, cache_dir=tmp_path)
    result = measure_standalone(composer, "dp_sgd", seeds=1)
    undefended, defended = result.metrics["audited_epsilon"]
    for summary in (undefended, defended):  # one reading per arm, a finite bound ≥ 0
        assert len(summary.values) == 1 and summary.mean is not None and summary.mean >= 0
