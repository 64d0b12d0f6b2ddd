"""The checker: Def\\Con's rules on built-in and user-declared specs, the naive baseline, and
properties that must hold for every combination (listing order, monotonicity, both searches)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from defcon.catalog import builtin_catalog
from defcon.checker import (
    TECHNIQUES,
    DefConTechnique,
    Verdict,
    check,
    get_technique,
    register,
)
from defcon.checker.ordering import (
    condensed_order,
    enumerated_order,
    strongly_connected,
    topological_order,
)
from defcon.errors import DefconError
from defcon.vocabulary import DefenseSpec, Metric, Risk, RiskUse, Slot, Stage

DEFAULT_SLOTS = {Stage.IN: [Slot.LOSS_TERM]}


def spec(
    name: str,
    stage: Stage | str,
    mitigates: Iterable[Risk | str],
    uses: Iterable[Risk | str] = (),
    slots: Iterable[Slot | str] | None = None,
) -> DefenseSpec:
    """A user-declared spec with just what the checker reads."""
    stage = Stage(stage)
    return DefenseSpec(
        name=name,
        title=name.replace("_", " "),
        stage=stage,
        mitigates=frozenset(Risk(r) for r in mitigates),
        uses=tuple(RiskUse(risk=Risk(r), reason=f"{name} relies on {r}") for r in uses),
        slots=frozenset(DEFAULT_SLOTS.get(stage, []) if slots is None else slots),
        metrics=(Metric(name="score", direction="higher", tolerance=0.05),),
    )


def pairs(verdict: Verdict) -> set[tuple[str, str, str]]:
    return {(c.earlier, c.risk.value, c.later) for c in verdict.conflicts}


# --- the two-defense rule -------------------------------------------------------------------


def test_watermark_then_pruning_conflicts_with_the_declared_reason():
    verdict = check(["backdoor_pruning", "model_watermark"])
    assert verdict.label == "ineffective"
    assert verdict.order == ("model_watermark", "backdoor_pruning")
    assert verdict.stages == {"pre": ("model_watermark",), "post": ("backdoor_pruning",)}
    (found,) = verdict.conflicts
    assert (found.earlier, found.earlier_stage, found.risk) == (
        "model_watermark",
        Stage.PRE,
        Risk.POISONING,
    )
    assert (found.later, found.later_stage) == ("backdoor_pruning", Stage.POST)
    assert found.reason == builtin_catalog()["model_watermark"].reason_for(Risk.POISONING)
    assert "backdoor_pruning mitigates poisoning" in verdict.explanation


def test_mitigating_first_and_using_later_is_effective():
    """The rule is directional: a filter before a defense that uses poisoning removes nothing
    the later defense needs (its poisoning comes after the filter)."""
    poison_filter = spec("poison_filter", "pre", ["poisoning"])
    api_trigger_mark = spec("api_trigger_mark", "post", ["model_theft"], uses=["poisoning"])
    verdict = check([api_trigger_mark, poison_filter])
    assert verdict.label == "effective"
    assert verdict.conflicts == ()
    assert verdict.order == ("poison_filter", "api_trigger_mark")


def test_same_roles_in_the_other_stages_conflict():
    early_mark = spec("early_mark", "pre", ["model_theft"], uses=["poisoning"])
    late_filter = spec("late_filter", "post", ["poisoning"])
    assert pairs(check([early_mark, late_filter])) == {("early_mark", "poisoning", "late_filter")}


def test_every_risk_of_a_pair_is_a_separate_conflict():
    user = spec("greedy_mark", "pre", ["model_theft"], uses=["poisoning", "evasion"])
    mitigator = spec("cleanser", "post", ["poisoning", "evasion"])
    verdict = check([user, mitigator])
    assert [c.risk for c in verdict.conflicts] == [Risk.EVASION, Risk.POISONING]


# --- three and more defenses ----------------------------------------------------------------


def test_one_defense_per_stage_is_effective_in_pipeline_order():
    verdict = check(["output_watermark", "dp_sgd", "model_watermark"])
    assert verdict.label == "effective"
    assert verdict.order == ("model_watermark", "dp_sgd", "output_watermark")


def test_every_earlier_constituent_is_checked_against_every_later_one():
    verdict = check(["data_watermark", "model_watermark", "backdoor_pruning", "explanations"])
    assert verdict.label == "ineffective"
    assert pairs(verdict) == {
        ("data_watermark", "poisoning", "backdoor_pruning"),
        ("model_watermark", "poisoning", "backdoor_pruning"),
    }


def test_a_stage_in_between_does_not_hide_a_conflict():
    verdict = check(["model_watermark", "dp_sgd", "backdoor_pruning"])
    assert pairs(verdict) == {("model_watermark", "poisoning", "backdoor_pruning")}


def test_pre_defense_conflicts_with_an_in_training_mitigator():
    verdict = check(["data_watermark", "backdoor_finetuning", "explanations"])
    assert pairs(verdict) == {("data_watermark", "poisoning", "backdoor_finetuning")}


def test_four_defenses_over_three_stages_take_the_sorted_order_within_a_stage():
    verdict = check(["explanations", "dp_sgd", "model_watermark", "adversarial_training"])
    assert verdict.label == "effective"
    assert verdict.order == ("model_watermark", "adversarial_training", "dp_sgd", "explanations")
    assert verdict.stages["in"] == ("adversarial_training", "dp_sgd")


def test_a_constraint_overrides_the_alphabetical_order_within_a_stage():
    """`api_trigger_mark` sorts first but uses poisoning, which pruning mitigates: pruning goes
    first, and Def\\Con calls the combination effective."""
    api_trigger_mark = spec("api_trigger_mark", "post", ["model_theft"], uses=["poisoning"])
    verdict = check(["backdoor_pruning", api_trigger_mark, "explanations"])
    assert verdict.label == "effective"
    assert verdict.stages["post"] == ("backdoor_pruning", "api_trigger_mark", "explanations")
    (precedence,) = verdict.precedences
    assert (precedence.before, precedence.after) == ("backdoor_pruning", "api_trigger_mark")


def test_in_training_watermark_goes_after_finetuning():
    verdict = check(["dp_sgd", "certified_watermark", "backdoor_finetuning"])
    assert verdict.label == "effective"
    assert verdict.order == ("backdoor_finetuning", "certified_watermark", "dp_sgd")


def test_every_ordered_pair_is_checked_not_only_neighbours():
    """a uses poisoning, c mitigates it, b is harmless: the alphabetical order a, b, c passes a
    neighbours-only check but c undoes a two steps later."""
    a = spec("a_mark", "post", ["model_theft"], uses=["poisoning"])
    b = spec("b_explain", "post", ["opacity"])
    c = spec("c_prune", "post", ["poisoning"])
    verdict = check([a, b, c])
    assert verdict.label == "effective"
    assert verdict.order == ("b_explain", "c_prune", "a_mark")


def test_a_stage_without_a_conflict_free_ordering_is_ineffective():
    x = spec("x_guard", "in", ["poisoning"], uses=["evasion"])
    y = spec("y_guard", "in", ["evasion"], uses=["poisoning"])
    verdict = check([y, x, "dp_sgd"])
    assert verdict.label == "ineffective"
    assert pairs(verdict) == {
        ("x_guard", "evasion", "y_guard"),
        ("y_guard", "poisoning", "x_guard"),
    }
    assert verdict.order == ("dp_sgd", "x_guard", "y_guard")
    assert "cycle" in verdict.explanation


def test_a_cycle_reports_only_its_members_and_orders_the_rest_around_it():
    """p→q→r→p is a cycle (each mitigates what the next uses); s uses what p mitigates and so
    must follow p; t is harmless. Only pairs inside the cycle are reported."""
    p = spec("p", "post", ["poisoning"], uses=["opacity"])
    q = spec("q", "post", ["evasion"], uses=["poisoning"])
    r = spec("r", "post", ["opacity"], uses=["evasion"])
    s = spec("s", "post", ["model_theft"], uses=["poisoning"])
    t = spec("t", "post", ["discrimination"])
    verdict = check([s, t, r, q, p])
    assert pairs(verdict) == {("q", "poisoning", "p"), ("r", "evasion", "q"), ("p", "opacity", "r")}
    assert verdict.order == ("p", "q", "r", "s", "t")


# --- the naive baseline, and where the techniques disagree -----------------------------------


@pytest.mark.parametrize(
    ("combination", "defcon_label", "naive_label"),
    [
        (["dp_sgd", "adversarial_training"], "effective", "ineffective"),
        (["model_watermark", "backdoor_pruning"], "ineffective", "effective"),
        (["dp_sgd", "output_watermark", "explanations"], "effective", "ineffective"),
        (["model_watermark", "dp_sgd", "explanations"], "effective", "effective"),
        (["data_watermark", "model_watermark", "backdoor_pruning"], "ineffective", "ineffective"),
    ],
)
def test_techniques_disagree_where_expected(combination, defcon_label, naive_label):
    assert check(combination).label == defcon_label
    assert check(combination, technique="naive").label == naive_label


def test_naive_orders_by_stage_then_name_and_reports_no_conflicts():
    verdict = check(["output_watermark", "explanations", "dp_sgd"], technique="naive")
    assert verdict.technique == "naive"
    assert verdict.order == ("dp_sgd", "explanations", "output_watermark")
    assert verdict.conflicts == ()
    assert "post: explanations, output_watermark" in verdict.explanation


# --- structural clashes -----------------------------------------------------------------------


def test_exclusive_slot_clash_is_reported_apart_from_the_label():
    other_dp = spec("other_dp", "in", ["membership_inference"], slots=["privacy_wrapper"])
    for technique in ("defcon", "naive"):
        verdict = check(["dp_sgd", other_dp], technique=technique)
        (clash,) = verdict.clashes
        assert clash.slot is Slot.PRIVACY_WRAPPER
        assert clash.defenses == ("dp_sgd", "other_dp")
        assert not verdict.composable
        assert "privacy_wrapper" in verdict.explanation
    assert check(["dp_sgd", other_dp]).label == "effective"


def test_shared_non_exclusive_slot_is_no_clash():
    verdict = check(["group_fairness", "certified_watermark"])
    assert verdict.clashes == ()
    assert verdict.composable


def test_built_in_in_training_pairs_clash_only_where_declared():
    """The declared exclusions, and the two defenses that each replace the training batch
    (adversarial examples, Gaussian-noised copies): both need the exclusive batch_transform."""
    names = [n for n, s in builtin_catalog().items() if s.stage is Stage.IN]
    clashing = {
        tuple(sorted(pair))
        for pair in itertools.combinations(names, 2)
        if not check(pair).composable
    }
    assert clashing == {
        ("certified_watermark", "dp_sgd"),
        ("adversarial_debiasing", "dp_sgd"),
        ("adversarial_training", "randomized_smoothing"),
    }


# --- the API: input errors, registry, serialisation ------------------------------------------


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["dp_sgd"], "at least 2 defenses"),
        ([], "at least 2 defenses"),
        (["dp_sgd", "dp_sgd"], "named twice"),
        (["dp_sgd", "model_watermak"], "Did you mean 'model_watermark'"),
    ],
)
def test_bad_combinations_raise_one_line_errors(names, message):
    with pytest.raises(DefconError, match=message) as caught:
        check(names)
    assert "\n" not in str(caught.value)


def test_unknown_technique_suggests_the_closest():
    with pytest.raises(DefconError, match="Did you mean 'naive'"):
        check(["dp_sgd", "explanations"], technique="naiv")
    with pytest.raises(DefconError, match="unknown technique"):
        get_technique("oracle")


def test_a_new_technique_plugs_in_with_one_registration():
    class Pessimist:
        name = "pessimist"
        summary = "every combination conflicts"

        def check(self, specs):
            base = TECHNIQUES["naive"].check(specs)
            return base.model_copy(update={"technique": self.name, "label": "ineffective"})

    register(Pessimist())
    try:
        assert check(["dp_sgd", "explanations"], technique="pessimist").label == "ineffective"
        with pytest.raises(ValueError, match="already registered"):
            register(Pessimist())
    finally:
        TECHNIQUES.pop("pessimist")


def test_specs_win_over_catalog_entries_and_catalog_can_be_a_mapping():
    harmless_pruning = spec("backdoor_pruning", "post", ["opacity"])
    assert check(["model_watermark", harmless_pruning]).label == "effective"
    catalog = {
        s.name: s for s in [spec("one", "pre", ["poisoning"]), spec("two", "post", ["evasion"])]
    }
    assert check(["one", "two"], catalog=catalog).order == ("one", "two")
    with pytest.raises(DefconError, match="unknown defense 'dp_sgd'"):
        check(["one", "dp_sgd"], catalog=catalog)


def test_verdict_json_round_trip():
    verdict = check(["model_watermark", "backdoor_pruning", "dp_sgd"])
    data = verdict.model_dump(mode="json")
    assert {"technique", "label", "order", "conflicts", "clashes", "explanation"} <= set(data)
    assert data["conflicts"][0]["risk"] == "poisoning"
    assert Verdict.model_validate(data) == verdict


def test_import_defcon_exposes_check_lazily():
    import defcon

    assert defcon.check(["dp_sgd", "explanations"]).label == "effective"


# --- properties -------------------------------------------------------------------------------

RISKS = [Risk.POISONING, Risk.EVASION, Risk.MODEL_THEFT]
NAMES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]


@st.composite
def specs_named(draw, name: str, stages: list[Stage]) -> DefenseSpec:
    stage = draw(st.sampled_from(stages))
    mitigates = draw(st.sets(st.sampled_from(RISKS), min_size=1, max_size=2))
    uses = draw(st.sets(st.sampled_from([r for r in RISKS if r not in mitigates])))
    slots = draw(st.sets(st.sampled_from(list(Slot)), min_size=1, max_size=2))
    return spec(name, stage, mitigates, uses, slots if stage is Stage.IN else ())


def combinations(min_size=2, max_size=6, stages=tuple(Stage)):
    names = st.lists(st.sampled_from(NAMES), min_size=min_size, max_size=max_size, unique=True)
    return names.flatmap(lambda ns: st.tuples(*(specs_named(n, list(stages)) for n in ns)))


def violations(order: tuple[str, ...], specs) -> list[tuple[str, str]]:
    by_name = {s.name: s for s in specs}
    return [
        (a, b)
        for a, b in itertools.combinations(order, 2)
        if by_name[a].uses_risks & by_name[b].mitigates
    ]


@settings(max_examples=100, deadline=None)
@given(combinations(), st.randoms(use_true_random=False))
def test_verdict_does_not_depend_on_listing_order(specs, rng):
    shuffled = list(specs)
    rng.shuffle(shuffled)
    for technique in TECHNIQUES:
        assert check(specs, technique=technique) == check(shuffled, technique=technique)


@settings(max_examples=100, deadline=None)
@given(combinations(max_size=5), st.sampled_from(NAMES), st.data())
def test_adding_a_defense_never_removes_a_conflict(specs, extra_name, data):
    assume(extra_name not in {s.name for s in specs})
    extra = data.draw(specs_named(extra_name, list(Stage)))
    before, after = check(specs), check([*specs, extra])
    assert set(before.conflicts) <= set(after.conflicts)
    if before.label == "ineffective":
        assert after.label == "ineffective"


@settings(max_examples=120, deadline=None)
@given(combinations(min_size=1, max_size=6, stages=[Stage.POST]))
def test_topological_and_enumerated_orders_agree(specs):
    """The default search and the paper's enumeration return the same lexicographically
    smallest conflict-free ordering, or both find none."""
    topo, enumerated = topological_order(specs), enumerated_order(specs)
    assert topo == enumerated
    valid = [
        names
        for names in itertools.permutations(sorted(s.name for s in specs))
        if not violations(names, specs)
    ]
    assert topo == (valid[0] if valid else None)
    # The fallback order used for reports equals it when one exists, and otherwise breaks
    # only constraints inside a cycle, which no ordering can satisfy.
    fallback = condensed_order(specs)
    if topo is not None:
        assert fallback == topo
    component = {name: i for i, group in enumerate(strongly_connected(specs)) for name in group}
    assert all(component[a] == component[b] for a, b in violations(fallback, specs))


@settings(max_examples=100, deadline=None)
@given(combinations(max_size=6))
def test_both_searches_give_identical_verdicts(specs):
    assert DefConTechnique("enumerate").check(specs) == DefConTechnique().check(specs)


@settings(max_examples=120, deadline=None)
@given(combinations())
def test_effective_exactly_when_the_order_has_no_conflicting_pair(specs):
    verdict = check(specs)
    assert sorted(verdict.order) == sorted(s.name for s in specs)
    assert (verdict.label == "effective") == (not violations(verdict.order, specs))
    by_name = {s.name: s for s in specs}
    for found in verdict.conflicts:
        assert found.risk in by_name[found.earlier].uses_risks
        assert found.risk in by_name[found.later].mitigates


@settings(max_examples=100, deadline=None)
@given(combinations())
def test_naive_is_ineffective_exactly_when_a_stage_is_shared(specs):
    verdict = check(specs, technique="naive")
    shared = len({s.stage for s in specs}) < len(specs)
    assert (verdict.label == "ineffective") == shared
    assert verdict.clashes == check(specs).clashes
