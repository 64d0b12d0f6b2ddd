"""Planning is pure: it validates a combination from declarations and plain data facts alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from defcon.catalog import builtin_catalog
from defcon.errors import DefconError
from defcon.planning.combination import plan_combination
from defcon.planning.rules import DataFacts, Scenario, applicability_problem, plan_audit
from defcon.vocabulary import DataKind

ROOT = Path(__file__).resolve().parents[1]
DIGITS = DataFacts("digits", DataKind.IMAGE)
ADULT = DataFacts("adult", DataKind.TABULAR, sensitive_attribute="sex")


def test_planning_imports_no_torch() -> None:
    code = (
        "import sys, defcon.planning.rules\n"
        "from defcon.catalog import builtin_catalog\n"
        "from defcon.planning.combination import plan_combination\n"
        "from defcon.planning.rules import DataFacts\n"
        "from defcon.vocabulary import DataKind\n"
        "plan_combination(['model_watermark', 'explanations'], builtin_catalog(),\n"
        "                 DataFacts('digits', DataKind.IMAGE))\n"
        "assert 'torch' not in sys.modules, 'planning imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_a_plan_has_the_checkers_order_and_the_union_of_threats() -> None:
    plan = plan_combination(
        ["backdoor_pruning", "model_watermark"], builtin_catalog(), DIGITS, force=True
    )
    assert plan.order == ("model_watermark", "backdoor_pruning")
    assert [s.name for s in plan.ordered_specs] == list(plan.order)
    assert plan.scenario.names() == ("model_thief", "poisoner") and plan.scenario.poisoned
    with pytest.raises(DefconError, match="Pass --force"):
        plan_combination(["backdoor_pruning", "model_watermark"], builtin_catalog(), DIGITS)


def test_applicability_reads_plain_facts() -> None:
    catalog = builtin_catalog()
    assert "tabular data only" in (applicability_problem(catalog["group_fairness"], DIGITS) or "")
    assert applicability_problem(catalog["group_fairness"], ADULT) is None
    no_sensitive = DataFacts("table", DataKind.TABULAR)
    assert "sensitive attribute" in (
        applicability_problem(catalog["group_fairness"], no_sensitive) or ""
    )
    with pytest.raises(DefconError, match="cannot compose on digits: 'group_fairness'"):
        plan_combination(["group_fairness", "explanations"], catalog, DIGITS)


def test_the_model_check_comes_after_applicability_and_before_the_refusal() -> None:
    asked: list[str] = []

    def model_problem(name: str) -> str | None:
        asked.append(name)
        return "no BatchNorm allowed" if name == "dp_sgd" else None

    with pytest.raises(DefconError, match="cannot compose with this model: no BatchNorm"):
        plan_combination(
            ["explanations", "dp_sgd"], builtin_catalog(), DIGITS, model_problem=model_problem
        )
    assert asked == ["explanations", "dp_sgd"]


def test_an_audit_plan_takes_zero_or_one_defense() -> None:
    assert plan_audit([], builtin_catalog(), DIGITS) == ([], None)
    assert plan_audit(["dp_sgd"], builtin_catalog(), DIGITS) == (["dp_sgd"], None)
    order, label = plan_audit(["explanations", "dp_sgd"], builtin_catalog(), DIGITS)
    assert order == ["dp_sgd", "explanations"] and label is not None


def test_the_scenario_is_the_union_of_the_defenses_threats() -> None:
    specs = [builtin_catalog()[n] for n in ("dp_sgd", "model_watermark")]
    scenario = Scenario.of(specs)
    assert set(scenario.names()) == {t.value for s in specs for t in s.threats}


def test_declared_not_applicable_kinds_refuse_before_training() -> None:
    catalog = builtin_catalog()
    problem = applicability_problem(catalog["dataset_inference"], ADULT) or ""
    assert "not applicable to tabular data (adult)" in problem and "overfit" in problem
    assert applicability_problem(catalog["dataset_inference"], DIGITS) is None
    problem = applicability_problem(catalog["correlation_remover"], ADULT) or ""
    assert "not applicable to tabular data" in problem and "linear" in problem
    with pytest.raises(DefconError, match="cannot compose on adult: 'dataset_inference' is not"):
        plan_combination(["dataset_inference", "group_fairness"], catalog, ADULT)
