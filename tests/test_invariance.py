"""Excessive invariance (Tramèr et al., ICML 2020): the metric can fail, stays inside the ε-ball,
says "not measurable" rather than inventing a number, and is reported beside robust accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from defcon.engine.data import Dataset, Split
from defcon.engine.invariance import (
    INVARIANCE_ERROR,
    LABEL_CHANGING,
    InvarianceSettings,
    invariance_error,
    invariance_set,
    measure_invariance,
    not_applicable,
)
from defcon.vocabulary import DataKind


def _two_levels(n: int, seed: int) -> Split:
    """Class 0: every pixel near 0.4; class 1: near 0.6 (1×4×4 images)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.4 + 0.2 * y[:, None, None, None] + 0.06 * (torch.rand(n, 1, 4, 4, generator=g) - 0.5)
    return Split(x.float(), y)


@pytest.fixture(scope="module")
def levels() -> Dataset:
    return Dataset(
        "levels", DataKind.IMAGE, 2, _two_levels(200, 0), _two_levels(40, 1), _two_levels(100, 2)
    )


class Threshold(nn.Module):
    """Class 1 when the mean pixel exceeds `cut` (0.5: the rule the data follows)."""

    def __init__(self, cut: float) -> None:
        super().__init__()
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 50 * (x.flatten(1).mean(1) - self.cut)
        return torch.stack([-score, score], dim=1)


class Constant(nn.Module):
    """Ignores its input entirely (class 0 always): maximally invariant."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))  # so an attack has a graph to follow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.bias + 0.0 * x.flatten(1).sum(1, keepdim=True)
        return logits + torch.nn.functional.one_hot(torch.tensor(0), len(self.bias))


def test_an_over_invariant_model_scores_high_and_a_normal_one_low(levels):
    found = invariance_set(levels, 0.15, seed=0)
    assert found.n >= 80  # the ball reaches the other class: almost every input changes class
    assert invariance_error(Constant(), found)[INVARIANCE_ERROR] == 1.0
    assert invariance_error(Threshold(0.5), found)[INVARIANCE_ERROR] <= 0.05
    # Accurate on clean inputs, but a margin pushed into class 1's side keeps class 0 inside
    # the ball where the true class changed: excessively invariant on half the inputs.
    biased = invariance_error(Threshold(0.57), found)[INVARIANCE_ERROR]
    assert 0.35 <= biased <= 0.65
    assert invariance_error(Threshold(0.5), found)[LABEL_CHANGING] == found.n


def test_perturbations_stay_in_the_ball_and_move_toward_another_class(levels):
    eps = 0.15
    found = invariance_set(levels, eps, seed=0)
    delta = (found.x_tilde - found.x).flatten(1)
    assert float(delta.abs().max()) <= eps + 1e-6
    assert float(found.x_tilde.min()) >= 0 and float(found.x_tilde.max()) <= 1
    assert bool((found.target != found.y).all())
    toward = torch.where(found.target[:, None] == 1, delta, -delta)
    assert bool((toward >= -1e-6).all())  # every pixel moves toward the other class's level


def test_a_ball_too_small_to_change_labels_is_not_measurable(levels):
    found = invariance_set(levels, 0.02, seed=0)
    assert found.n == 0
    measured = invariance_error(Constant(), found)
    assert math.isnan(measured[INVARIANCE_ERROR]) and measured[LABEL_CHANGING] == 0


def test_the_oracle_is_conservative_and_seeded(levels):
    strict = invariance_set(levels, 0.11, seed=0)
    loose = invariance_set(levels, 0.11, seed=0, settings=InvarianceSettings(require_closer=False))
    assert strict.n <= loose.n  # "closer to x′ than to x" only removes cases
    again = invariance_set(levels, 0.11, seed=0)
    assert torch.equal(strict.label_changing, again.label_changing)
    subset = invariance_set(levels, 0.15, seed=3, settings=InvarianceSettings(samples=30))
    assert len(subset.y) == 30


def test_tabular_data_is_not_measured(make_env):
    dataset = make_env("adult").dataset
    assert "tabular" in not_applicable(dataset)
    with pytest.raises(ValueError, match="tabular"):
        measure_invariance(Constant(), dataset, 0.05, seed=0)


def test_evasion_reports_invariance_on_images_only(make_env):
    from defcon.risks.evasion import Evasion

    attack = Evasion()
    images, table = make_env("digits").dataset, make_env("adult").dataset
    assert {m.name for m in attack.metrics_for(images)} == {
        "robust_accuracy", INVARIANCE_ERROR, LABEL_CHANGING,
    }  # fmt: skip
    assert {m.name for m in attack.metrics_for(table)} == {"robust_accuracy"}
    assert "tabular" in attack.unreported(table)[INVARIANCE_ERROR]
    assert attack.unreported(images) == {}
    assert attack.primary.name == "robust_accuracy"  # the risk's arrow is unchanged


def test_evasion_measures_invariance_in_its_own_ball(make_env):
    from defcon.risks.evasion import Evasion

    env = make_env("digits")
    model = Constant(classes=10)
    small = Evasion({"steps": 1, "samples": 50}).run(model, env)
    assert small[LABEL_CHANGING] == 0 and math.isnan(small[INVARIANCE_ERROR])  # ε 0.1 on digits
    large = Evasion({"eps": 0.3, "steps": 1, "samples": 50}).run(model, env)
    assert large[LABEL_CHANGING] > 0 and large[INVARIANCE_ERROR] == 1.0


def test_standalone_tables_report_invariance_beside_robust_accuracy(tmp_path):
    from defcon.measure.composer import Composer
    from defcon.measure.standalone import measure_standalone, standalone_markdown

    composer = Composer(
        "digits", profile="tiny", cache_dir=tmp_path,
        configs={"adversarial_training": {"eps": 0.3, "eval_samples": 100}},
    )  # fmt: skip
    result = measure_standalone(composer, "adversarial_training", seeds=1)
    assert result.invariance_eps == 0.3  # the defense's own ball, where its robust accuracy is
    (count,) = result.label_changing
    assert count > 0
    plain, defended = result.invariance
    assert 0.0 <= plain.mean <= 1.0 and 0.0 <= defended.mean <= 1.0
    table = standalone_markdown([result], "t")
    row = next(line for line in table.splitlines() if "invariance_error" in line)
    assert "L∞ ε = 0.3" in row and f"n = {count})" in row
    assert "proxy oracle, not a human" in table
    again = measure_standalone(composer, "adversarial_training", seeds=1)
    assert again.invariance == result.invariance  # cached with the models' measurements


def test_standalone_cells_say_when_invariance_is_not_measurable():
    from defcon.effectiveness import Summary
    from defcon.measure.standalone import StandaloneResult, invariance_cell, standalone_markdown
    from defcon.vocabulary import Direction

    nan = float("nan")
    assert invariance_cell(Summary.of([nan, nan]), (0, 0)) == "not measurable (n = 0, 0)"
    assert invariance_cell(Summary.of([1.0, nan, nan]), (1, 0, 0)) == (
        "kept 1/1 on 1 of 3 seeds, not measurable on the others (n = 1, 0, 0)"
    )
    assert invariance_cell(Summary.of([0.5, 1.0]), (2, 1)) == "0.750 ± 0.354 (kept 2/3; n = 2, 1)"
    one = Summary.of([0.5])
    base = dict(
        defense="d", profile="quick", seeds=1, metrics={"robust_accuracy": (one, one)},
        directions={"robust_accuracy": Direction.HIGHER}, clean_accuracy=(one, one),
        wall_time_s=1.0,
    )  # fmt: skip
    tabular = StandaloneResult(dataset="adult", invariance_note="not on tabular data", **base)
    assert "| adult | d | invariance_error | not measured: not on tabular data |" in (
        standalone_markdown([tabular], "t")
    )
    other = StandaloneResult(dataset="fmnist", **base)  # a defense that does not mitigate evasion
    assert "invariance" not in standalone_markdown([other], "t")
