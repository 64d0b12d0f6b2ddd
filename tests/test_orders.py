"""The order within a stage: every order to measure, the better measured one, `compose --order`."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_one_line_error, run

from defcon.catalog import builtin_catalog
from defcon.errors import DefconError
from defcon.planning.orders import (
    better_order,
    check_order_choice,
    given_order,
    order_lines,
    stage_orders,
)

CATALOG = builtin_catalog()


def test_orders_keep_stages_in_pipeline_order_and_permute_within_them() -> None:
    names = ["backdoor_pruning", "data_watermark", "model_watermark", "output_watermark"]
    assert given_order(CATALOG, names) == (
        "data_watermark", "model_watermark", "backdoor_pruning", "output_watermark",
    )  # fmt: skip
    orders = stage_orders(CATALOG, names)
    assert len(orders) == 4  # 2 pre orders × 2 post orders
    assert orders[0] == given_order(CATALOG, names)  # the given order first
    assert len(set(orders)) == 4
    for order in orders:
        assert set(order[:2]) == {"data_watermark", "model_watermark"}  # pre before post
    assert stage_orders(CATALOG, ["dp_sgd", "backdoor_pruning"]) == [("dp_sgd", "backdoor_pruning")]


def test_the_better_order_is_the_single_best_label_and_a_shared_best_is_a_tie() -> None:
    ab, ba = ("a", "b"), ("b", "a")
    assert better_order({ab: "ineffective", ba: "effective"}) == ba
    assert better_order({ab: "inconclusive", ba: "ineffective"}) == ab
    assert better_order({ab: "effective", ba: "effective"}) is None  # a tie
    assert better_order({ab: "not_effective_alone", ba: "effective"}) is None  # does not compare
    assert better_order({ab: "unreliable", ba: "effective"}) is None
    lines = order_lines({ab: "ineffective", ba: "effective"}, ab)
    assert lines[-1] == "measured better: b → a (not the checker's)"
    assert order_lines({ab: "effective", ba: "effective"}, ab)[-1].startswith("no order")


def test_an_unknown_order_choice_is_one_error() -> None:
    assert check_order_choice("given") == "given"
    with pytest.raises(DefconError, match="accepted: checker, given, all"):
        check_order_choice("random")
    result = run("compose", "data_watermark", "model_watermark", "--order", "random")
    assert_one_line_error(result, "--order 'random'", "checker, given, all")
    result = run("compose", "data_watermark", "model_watermark", "--order", "all",
                 "--save-model", "somewhere")  # fmt: skip
    assert_one_line_error(result, "--save-model saves one model", "--order checker or given")


@pytest.mark.slow
def test_compose_order_all_measures_each_order_and_says_which_did_better(tmp_path) -> None:
    out = tmp_path / "out"
    result = run(
        "compose", "model_watermark", "data_watermark", "--order", "all", "--profile", "tiny",
        "--seeds", "2", "--out", str(out), "--json", str(tmp_path / "all.json"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "all.json").read_text())
    assert [tuple(r["order"]) for r in records] == [
        ("model_watermark", "data_watermark"), ("data_watermark", "model_watermark"),
    ]  # fmt: skip
    assert {r["order_choice"] for r in records} == {"given"}
    assert "the checker's order: data_watermark → model_watermark" in result.output
    assert len(list((out / "records").glob("*.json"))) == 2  # one record per order


def test_the_bench_measures_a_given_order_under_its_own_record_names(tmp_path, monkeypatch):
    import defcon.bench.run as bench

    seen: list = []
    monkeypatch.setattr(bench, "_run_local", lambda tasks, workers, report: seen.extend(tasks))
    pair = ("model_watermark", "data_watermark")
    bench.run_bench(["digits"], pairs=[pair], out=tmp_path, seeds=1, profile="tiny")
    bench.run_bench(["digits"], pairs=[pair], out=tmp_path, seeds=1, profile="tiny", order="given")
    checker, given = seen
    assert (checker.order, given.order) == ("checker", "given")
    assert "-given-model_watermark+data_watermark" in given.record_path
    assert "-given" not in checker.record_path
    with pytest.raises(DefconError, match="accepted: checker, given"):
        bench.run_bench(["digits"], pairs=[pair], out=tmp_path, seeds=1, order="all")


def test_round_two_measures_every_order_of_each_same_stage_group() -> None:
    from benchmark_scripts import load_script

    script = load_script("prospective")
    document = {
        "orders": [
            {"dataset": "adult", "defenses": ["dp_sgd", "fine_pruning", "backdoor_pruning"],
             "orders": [["backdoor_pruning", "fine_pruning"], ["fine_pruning", "backdoor_pruning"]]},
        ]
    }  # fmt: skip
    assert script.given_orders(document) == {
        "adult": [
            ("dp_sgd", "backdoor_pruning", "fine_pruning"),
            ("dp_sgd", "fine_pruning", "backdoor_pruning"),
        ]
    }
