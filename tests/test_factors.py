"""The `factors` technique, the factor declarations, the factor probes and their reports."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import run as run_cli
from pydantic import ValidationError
from torch import nn

import defcon.checker
from defcon.bench.results import leave_one_out
from defcon.catalog import builtin_catalog, load_catalog_file
from defcon.checker import check
from defcon.checker.factors_technique import FactorsTechnique, chains
from defcon.engine.data import Split
from defcon.engine.probes import (
    boundary_distance,
    capacity,
    group_accuracy_gap,
    input_gradient_norm,
)
from defcon.errors import DefconError
from defcon.planning.records import repredicted
from defcon.vocabulary import Arrow, DefenseSpec, Factor, FactorClaim, Metric, Risk, Slot, Stage

CHECKER_SOURCES = sorted(Path(defcon.checker.__file__).parent.glob("*.py"))


def claim(factor: str, direction: str, reads: bool = False) -> FactorClaim:
    return FactorClaim(
        factor=Factor(factor),
        direction=Arrow(direction),
        reference="ref",
        reason="why",
        reads=reads,
    )


def spec(
    name: str,
    stage: str,
    moves: tuple[FactorClaim, ...] = (),
    depends_on: tuple[FactorClaim, ...] = (),
) -> DefenseSpec:
    return DefenseSpec(
        name=name,
        title=name,
        stage=Stage(stage),
        mitigates=frozenset({Risk.EVASION}),
        slots=frozenset({Slot.LOSS_TERM}) if stage == "in" else frozenset(),
        metrics=(Metric(name="score", direction="higher", tolerance=0.05),),
        moves=moves,
        depends_on=depends_on,
    )


# --- the technique on the built-in catalog ---------------------------------------------------


def test_adversarial_training_with_dp_sgd_is_a_conflict_through_the_boundary_distance() -> None:
    verdict = check(["adversarial_training", "dp_sgd"], technique="factors")
    assert verdict.label == "ineffective"
    assert not verdict.conflicts  # Def\Con's risk rule is silent here
    named = {(c.mover, c.factor, c.dependent) for c in verdict.factor_chains}
    assert ("dp_sgd", Factor.O3, "adversarial_training") in named
    assert "dp_sgd moves O3↓" in verdict.explanation


def test_cli_names_the_factor_and_the_chain() -> None:
    result = run_cli(
        "check", "adversarial_training", "dp_sgd", "--technique", "factors", "--data-kind", "image"
    )
    assert result.exit_code == 0
    assert "CONFLICT" in result.output and "UNCERTAIN" not in result.output
    assert "dp_sgd moves O3↓" in result.output
    assert "adversarial_training's effectiveness rises with O3" in result.output


def test_factors_keeps_every_conflict_defcon_finds() -> None:
    catalog = builtin_catalog()
    for pair in itertools.combinations(sorted(catalog), 2):
        if check(list(pair), technique="defcon").label == "ineffective":
            assert check(list(pair), technique="factors").label == "ineffective", pair


def _code_words(source: Path) -> set[str]:
    """Identifiers and string literals of a module's code (docstrings left out)."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    words: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            words |= set(re.findall(r"[a-z][a-z0-9_]+", node.value))
    return words


def test_no_checker_rule_names_a_defense() -> None:
    names = set(builtin_catalog())
    assert CHECKER_SOURCES
    for source in CHECKER_SOURCES:
        named = _code_words(source) & names
        assert not named, f"{source.name} names {sorted(named)} in its code"


def test_every_builtin_defense_declares_factors_with_references() -> None:
    for spec_ in builtin_catalog().values():
        claims = (*spec_.moves, *spec_.depends_on)
        assert claims, f"{spec_.name} declares no factor"
        for item in claims:
            assert item.reference.strip() and item.reason.strip()


# --- order and stage logic, and the SoK guideline ------------------------------------------


def test_a_later_retraining_reaches_earlier_defenses_only() -> None:
    retrainer = spec("retrainer", "post", moves=(claim("retrained_after_main_training", "up"),))
    needs_weights_in = spec(
        "trained_in", "in", depends_on=(claim("retrained_after_main_training", "down"),)
    )
    assert chains([needs_weights_in, retrainer], ["trained_in", "retrainer"])
    needs_weights_post = spec(
        "later_post", "post", depends_on=(claim("retrained_after_main_training", "down"),)
    )
    before = chains([needs_weights_post, retrainer], ["later_post", "retrainer"])
    after = chains([needs_weights_post, retrainer], ["retrainer", "later_post"])
    assert before and not after  # a post defense applied after the change acts on its result


def test_model_factors_reach_whatever_the_order() -> None:
    mover = spec("mover", "post", moves=(claim("O3", "down"),))
    dependent = spec("dependent", "pre", depends_on=(claim("O3", "up"),))
    assert chains([dependent, mover], ["dependent", "mover"])
    assert chains([dependent, mover], ["mover", "dependent"])


def test_agreeing_factors_predict_no_conflict() -> None:
    mover = spec("mover", "in", moves=(claim("O3", "up"),))
    dependent = spec("dependent", "post", depends_on=(claim("O3", "up"),))
    assert check([mover, dependent], technique="factors").label == "effective"


def test_objective_factors_dominate_data_factors_and_a_tie_is_silent() -> None:
    objective_harms = spec("a", "in", moves=(claim("O3", "down"), claim("D2", "up")))
    dependent = spec("b", "post", depends_on=(claim("O3", "up"), claim("D2", "up")))
    assert chains([objective_harms, dependent], ["a", "b"])
    data_harms = spec("c", "in", moves=(claim("O3", "up"), claim("D2", "down")))
    assert not chains([data_harms, dependent], ["c", "b"])
    tie = spec("d", "in", moves=(claim("O3", "down"), claim("O1", "up")))
    needs_both = spec("e", "post", depends_on=(claim("O3", "up"), claim("O1", "up")))
    assert not chains([tie, needs_both], ["d", "e"])


def test_a_harmful_mechanical_fact_is_a_conflict_on_its_own() -> None:
    mover = spec("mover", "in", moves=(claim("batch_normalisation", "down"), claim("O3", "up")))
    dependent = spec(
        "dependent", "post", depends_on=(claim("batch_normalisation", "up"), claim("O3", "up"))
    )
    found = chains([mover, dependent], ["mover", "dependent"])
    assert [c.factor for c in found] == [Factor.BATCH_NORMALISATION]


def test_a_move_against_a_factor_the_metric_reads_decides_over_a_tie() -> None:
    tie = spec("d", "in", moves=(claim("O3", "down"), claim("O1", "up")))
    reads_margin = spec("e", "post", depends_on=(claim("O3", "up", reads=True), claim("O1", "up")))
    found = chains([tie, reads_margin], ["d", "e"])
    assert [(c.mover, c.factor, c.dependent) for c in found] == [("d", Factor.O3, "e")]


def test_a_chain_through_data_and_model_factors_alone_counts_with_less_confidence() -> None:
    adds_a_key_set = spec("keys", "pre", moves=(claim("D2", "up"),))
    needs_short_tail = spec("margin", "in", depends_on=(claim("D2", "down"), claim("M1", "up")))
    verdict = FactorsTechnique().check([adds_a_key_set, needs_short_tail])
    assert verdict.label == "ineffective" and not verdict.uncertain
    assert [(c.mover, c.factor, c.dependent) for c in verdict.factor_chains] == [
        ("keys", Factor.D2, "margin")
    ]
    # the same data factor beside a harmful objective factor: the objective's level
    also_objective = spec("both", "pre", moves=(claim("D2", "up"), claim("O3", "down")))
    needs_margin = spec("margin2", "in", depends_on=(claim("D2", "down"), claim("O3", "up")))
    objective = FactorsTechnique().check([also_objective, needs_margin])
    assert objective.label == "ineffective"
    assert objective.confidence > verdict.confidence


def test_a_tie_under_the_guideline_is_uncertain_and_outweighed_links_are_not_counted() -> None:
    tie = spec("tie", "in", moves=(claim("O3", "down"), claim("O1", "up")))
    needs_both = spec("needs", "post", depends_on=(claim("O3", "up"), claim("O1", "up")))
    verdict = FactorsTechnique().check([tie, needs_both])
    assert verdict.uncertain and verdict.reported == "uncertain"
    assert verdict.label == "effective" and verdict.confidence == 0.5
    assert "Uncertain: the SoK's guideline ties" in verdict.explanation
    assert [(c.mover, c.factor) for c in verdict.weak_chains] == [("tie", Factor.O3)]
    # two helpful objective factors outweigh one harmful: no conflict, not uncertain
    mostly = spec(
        "mostly", "in", moves=(claim("O3", "down"), claim("O1", "up"), claim("O2.1", "up"))
    )
    needs_three = spec(
        "three", "post", depends_on=(claim("O3", "up"), claim("O1", "up"), claim("O2.1", "up"))
    )
    outweighed = FactorsTechnique().check([mostly, needs_three])
    assert outweighed.label == "effective" and not outweighed.uncertain
    assert outweighed.weak_chains and not outweighed.factor_chains


def scoped(factor: str, direction: str, kinds: list[str]) -> FactorClaim:
    return FactorClaim(
        factor=Factor(factor), direction=Arrow(direction), reference="ref", reason="why",
        data_kinds=frozenset(kinds), scope_reason="measured only on these kinds",
    )  # fmt: skip


def test_a_claim_scoped_to_a_data_kind_counts_only_there_and_is_uncertain_unscoped() -> None:
    narrows = spec("narrows", "in", moves=(scoped("O3", "down", ["image"]),))
    needs_margin = spec("margin", "post", depends_on=(claim("O3", "up", reads=True),))
    on_images = check([narrows, needs_margin], technique="factors", data_kind="image")
    assert on_images.label == "ineffective" and not on_images.uncertain
    on_tables = check([narrows, needs_margin], technique="factors", data_kind="tabular")
    assert on_tables.label == "effective" and not on_tables.factor_chains
    unknown = check([narrows, needs_margin], technique="factors")
    assert unknown.reported == "uncertain" and unknown.label == "ineffective"
    assert "scoped to some data kinds" in unknown.explanation
    # a technique that reads no data kind predicts the same on every kind
    assert check([narrows, needs_margin], data_kind="tabular").label == "effective"
    with pytest.raises(DefconError, match="takes one of image, tabular, got 'text'"):
        check([narrows, needs_margin], technique="factors", data_kind="text")
    with pytest.raises(ValidationError, match="without a scope_reason"):
        FactorClaim(
            factor=Factor.O3, direction=Arrow.DOWN, reference="r", reason="w",
            data_kinds=frozenset({"image"}),
        )  # fmt: skip


def test_a_label_resting_on_a_contested_claim_is_uncertain() -> None:
    widens_gap = FactorClaim(
        factor=Factor.O2_1, direction=Arrow.UP, reference="ref", reason="why",
        contested="the probes measure the opposite",
    )  # fmt: skip
    mover = spec("mover", "in", moves=(widens_gap,))
    reads_gap = spec("private", "post", depends_on=(claim("O2.1", "down", reads=True),))
    verdict = check([mover, reads_gap], technique="factors", data_kind="image")
    assert verdict.reported == "uncertain" and verdict.label == "ineffective"
    assert "contested by contrary evidence" in verdict.explanation
    # an uncontested harmful chain beside it decides: no longer uncertain
    also = spec("also", "in", moves=(widens_gap, claim("O3", "down")))
    needs = spec("needs", "post", depends_on=(claim("O2.1", "down", reads=True), claim("O3", "up")))
    decided = check([also, needs], technique="factors", data_kind="image")
    assert decided.label == "ineffective" and not decided.uncertain


def test_dp_sgd_narrowing_the_margin_is_claimed_on_images_only() -> None:
    on_images = check(["dp_sgd", "randomized_smoothing"], technique="factors", data_kind="image")
    assert on_images.label == "ineffective"
    assert ("dp_sgd", Factor.O3) in {(c.mover, c.factor) for c in on_images.factor_chains}
    on_tables = check(["dp_sgd", "randomized_smoothing"], technique="factors", data_kind="tabular")
    assert on_tables.label == "effective"
    result = run_cli("check", "dp_sgd", "randomized_smoothing", "-t", "factors")
    assert (
        result.exit_code == 0
        and "UNCERTAIN" in result.output
        and "leans ineffective" in result.output
    )
    result = run_cli("check", "dp_sgd", "randomized_smoothing", "-t", "factors", "--data-kind", "x")
    assert (
        result.exit_code == 2 and "error: --data-kind takes one of image, tabular" in result.output
    )


def test_reads_is_only_for_dependencies_on_objective_factors() -> None:
    with pytest.raises(ValidationError, match="only a dependency can be read"):
        spec("x", "in", moves=(claim("O3", "up", reads=True),))
    with pytest.raises(ValidationError, match="can read only a factor of its objective"):
        spec("x", "in", depends_on=(claim("D2", "up", reads=True),))


def test_a_factor_declared_twice_is_rejected() -> None:
    with pytest.raises(ValidationError, match="declares a factor twice"):
        spec("x", "in", moves=(claim("O3", "up"), claim("O3", "down")))


def test_user_catalog_declares_factors_and_show_prints_them(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        """
[[defense]]
name = "my_smoother"
title = "My smoother"
stage = "post"
mitigates = ["evasion"]
[[defense.metrics]]
name = "score"
direction = "higher"
tolerance = 0.05
[[defense.moves]]
factor = "O3"
direction = "down"
reference = "Someone et al., 2024"
reason = "it squeezes the margin"
""",
        encoding="utf-8",
    )
    (mine,) = load_catalog_file(path)
    assert mine.moves[0].arrow() == "O3↓"
    verdict = check(["adversarial_training", "my_smoother"], technique="factors", catalog=path)
    assert verdict.label == "ineffective"
    shown = run_cli("show", "dp_sgd")
    assert shown.exit_code == 0 and "O2.1↓ (read)" in shown.output and "Feldman" in shown.output


# --- probes -----------------------------------------------------------------------------------


def test_boundary_distance_is_exact_for_a_linear_model() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[0.5, 3.0], [-2.0, 1.0]])
    y = torch.tensor([0, 0])  # the first is right (distance 0.5), the second wrong (-2)
    split = Split(x, y)
    assert boundary_distance(model, split) == pytest.approx((0.5 - 2.0) / 2)


def test_capacity_sees_pruned_weights() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert capacity(model) == 3 * 4 + 4 + 4 * 2 + 2
    with torch.no_grad():
        model[2].weight[:, 1] = 0.0  # prune hidden unit 1 the way backdoor pruning does
    assert capacity(model) == 3 * 4 + 4 + 4 * 2 + 2 - 2


def test_input_gradient_norm_and_group_gap() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 1])
    s = torch.tensor([0, 0, 1, 1])
    assert input_gradient_norm(model, Split(x, y)) > 0
    assert group_accuracy_gap(model, Split(x, y, s)) == pytest.approx(1.0)  # 1.0 vs 0.0
    assert torch.isnan(torch.tensor(group_accuracy_gap(model, Split(x, y))))


def test_the_group_gap_is_read_on_what_is_served_the_rest_on_the_weights(make_env) -> None:
    from defcon.engine.defense import ServingWrapper
    from defcon.engine.probes import probe_factors

    env = make_env("adult")
    model = nn.Sequential(nn.Flatten(), nn.Linear(env.dataset.test.x[0].numel(), 2))

    class AnswersZero(ServingWrapper):  # an API that serves class 0 to everyone
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([1.0, 0.0]).expand(len(x), 2)

    raw, served = probe_factors(model, env), probe_factors(AnswersZero(model), env)
    assert served["group_accuracy_gap"] != raw["group_accuracy_gap"]
    for name in ("generalization_gap", "boundary_distance", "input_gradient_norm", "parameters"):
        assert served[name] == raw[name]


# --- scoring every technique ----------------------------------------------------------------


def test_leave_one_out_scores_each_technique_without_each_defense(fake_record) -> None:
    records = [
        repredicted(fake_record("adult", ("adversarial_training", "dp_sgd"))),
        repredicted(fake_record("adult", ("model_watermark", "output_watermark"))),
    ]
    assert records[0].predicted["factors"] == "ineffective"  # recomputed, not stored
    view = leave_one_out(records)
    assert set(view) == {"adversarial_training", "dp_sgd", "model_watermark", "output_watermark"}
    assert view["dp_sgd"]["factors"].n == 1
