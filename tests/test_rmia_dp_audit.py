"""RMIA separates an overfit model's members and not a model that saw none; the one-run audit
bound stays below a claimed ε and grows with guessing accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from defcon.engine.data import Split
from defcon.engine.dp_audit import audit_from_scores, epsilon_lower_bound
from defcon.engine.rmia import rmia_attack


def _split(x: torch.Tensor, y: torch.Tensor) -> Split:
    return Split(x=x, y=y)


def _fit(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = ((x[:, 0] + torch.randn(n, generator=g)) > 0).long()  # noisy labels: memorisable
    return x, y


@pytest.fixture(scope="module")
def pools() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    names = ["members", "others", "population", "calibration", "ref0", "ref1"]
    return {name: _data(300 if "ref" not in name else 300, i) for i, name in enumerate(names)}


def test_rmia_separates_overfit_members(pools) -> None:
    refs = [_fit(*pools[f"ref{i}"], 300, i) for i in range(2)]
    target = _fit(*pools["members"], 300, 7)
    reading = rmia_attack(
        target, refs, _split(*pools["members"]), _split(*pools["others"]),
        _split(*pools["population"]), _split(*pools["calibration"]),
    )  # fmt: skip
    assert reading.auc > 0.7
    assert reading.tpr_at_1_fpr > 0.05
    assert reading.calibration_fpr < 0.05  # threshold from unseen data transfers to the test


def test_rmia_does_not_separate_unseen_candidates(pools) -> None:
    refs = [_fit(*pools[f"ref{i}"], 300, i) for i in range(2)]
    target = _fit(*pools["population"], 300, 7)  # trained on none of the candidates
    reading = rmia_attack(
        target, refs, _split(*pools["members"]), _split(*pools["others"]),
        _split(*_data(300, 99)), _split(*pools["calibration"]),
    )  # fmt: skip
    assert abs(reading.auc - 0.5) < 0.08
    assert reading.tpr_at_1_fpr < 0.05


def test_audit_bound_below_claim_and_monotone() -> None:
    rng = np.random.default_rng(0)
    m, claimed = 1000, 2.0
    included = rng.random(m) < 0.5
    # a synthetic ε-DP randomized response: each canary's score reveals inclusion w.p. e^ε/(1+e^ε)
    truthful = rng.random(m) < np.exp(claimed) / (1 + np.exp(claimed))
    guess = np.where(truthful, included, ~included)
    scores = guess + 0.01 * rng.random(m)
    bound = audit_from_scores(scores, included, guesses=m)
    assert 0 < bound <= claimed
    weaker = [epsilon_lower_bound(c, 200, 1000) for c in (110, 140, 170, 195)]
    assert weaker == sorted(weaker) and weaker[0] < weaker[-1]
    assert epsilon_lower_bound(100, 200, 1000) == 0.0
    assert epsilon_lower_bound(170, 200, 1000, delta=1e-5) <= epsilon_lower_bound(170, 200, 1000)
