"""benchmarks/frontier.py, its pure parts: points and no-DP references read from composition
records, the markdown table, the plot, argument checks (no training here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from benchmark_scripts import load_script

from defcon.catalog import builtin_catalog
from defcon.effectiveness import Summary, defense_outcome, judge
from defcon.planning.records import DefenseResult


@pytest.fixture(scope="module")
def frontier():
    return load_script("frontier")


def _result(name: str, values: dict[str, tuple[list, list, list]], clean_alone: list[float]):
    """A DefenseResult judged from per-metric (alone, combined, no defense) seed values."""
    spec = builtin_catalog()[name]
    verdicts = tuple(judge(name, m, *values[m.name]) for m in spec.metrics)
    return DefenseResult(
        defense=name, stage=spec.stage, metrics=verdicts, outcome=defense_outcome(verdicts),
        clean_accuracy_alone=Summary.of(clean_alone),
    )  # fmt: skip


def _record(fake_record, robust: str, metric: str, epsilon: float, combined: list[float]):
    inf = math.inf
    dp = _result(
        "dp_sgd",
        {
            "epsilon": ([epsilon] * 2, [epsilon] * 2, [inf, inf]),
            "mia_auc": ([0.5, 0.5], [0.5, 0.5], [0.55, 0.56]),
            "mia_tpr_at_1_fpr": ([0.01, 0.01], [0.01, 0.01], [0.02, 0.03]),
            "mia_tpr_at_0_1_fpr": ([0.001, 0.001], [0.001, 0.001], [0.004, 0.005]),
            "audited_epsilon": ([0.0, 0.0], [0.0, 0.0], [1.5, 1.7]),
            "mia_calibration_fpr": ([0.01, 0.01], [0.01, 0.01], [0.01, 0.01]),
        },
        [0.8, 0.8],
    )
    defended = _result(robust, {metric: ([0.6, 0.62], combined, [0.1, 0.12])}, [0.85, 0.87])
    return fake_record("fmnist", ("dp_sgd", robust)).model_copy(
        update={
            "results": (dp, defended),
            "label": "ineffective",
            "clean_accuracy_combined": Summary.of([0.7, 0.72]),
            "clean_accuracy_no_defense": Summary.of([0.9, 0.9]),
        }
    )


def test_points_and_references_read_the_right_arms(frontier, fake_record, tmp_path: Path):
    record = _record(fake_record, "randomized_smoothing", "certified_accuracy", 2.0, [0.3, 0.34])
    dp_alone = (Summary.of([0.2, 0.22]), Summary.of([0.8, 0.8]))
    point = frontier.point_from_record(record, "randomized_smoothing", 1.0, "r.json", dp_alone)
    assert point.epsilon.mean == 2.0 and point.robust.mean == pytest.approx(0.32)
    assert point.clean.mean == pytest.approx(0.71) and point.label == "ineffective"
    assert point.dp_alone_robust.mean == pytest.approx(0.21)
    alone, none = frontier.references_from_record(record, "randomized_smoothing")
    assert (alone.arm, none.arm) == ("alone", "no defense")
    assert alone.robust.mean == pytest.approx(0.61) and alone.clean.mean == pytest.approx(0.86)
    assert none.robust.mean == pytest.approx(0.11) and none.clean.mean == pytest.approx(0.9)

    at = _record(fake_record, "adversarial_training", "robust_accuracy", 0.5, [0.4, 0.4])
    points = [point, frontier.point_from_record(at, "adversarial_training", 4.0, "a.json")]
    refs = [*frontier.references_from_record(record, "randomized_smoothing")]
    text = frontier.markdown(
        points, refs, command="python benchmarks/frontier.py", seconds={"fmnist: training": 3.0},
        wall_time_s=4.0,
    )  # fmt: skip
    assert "## fmnist: dp_sgd + randomized_smoothing (certified_accuracy)" in text
    assert "| 1 | 2.00 ± 0.00 | 0.320 ± 0.028 | 0.210 ± 0.014 | 0.710 ± 0.014 |" in text
    assert "| no DP (randomized_smoothing alone) | ∞ | 0.610 ± 0.014 |" in text
    assert "| 4 | 0.50 ± 0.00 | 0.400 ± 0.000 | – |" in text  # no dp_sgd-alone reading given
    path = frontier.plot(points, refs, tmp_path / "frontier.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_record_names_and_argument_checks(frontier, capsys):
    name = frontier.record_name("adult", "quick", 3, "randomized_smoothing", 0.5)
    assert name == "adult-quick-seeds3-dp_sgd+randomized_smoothing-noise0.5.json"
    for bad in (["--defenses", "dp_sgd"], ["--noise", "1,x"], ["--noise", "0,1"]):
        with pytest.raises(SystemExit) as exit_info:
            frontier.main(bad)
        assert exit_info.value.code == 2
    assert "--noise" in capsys.readouterr().err


def test_a_point_on_disk_is_read_back_without_a_composer(frontier, fake_record, tmp_path: Path):
    record = _record(fake_record, "randomized_smoothing", "certified_accuracy", 2.0, [0.3, 0.3])
    name = frontier.record_name("nowhere", "quick", 2, "randomized_smoothing", 1.0)
    path = tmp_path / "records" / name
    frontier.save_record(record, path)
    dp_alone = frontier.DPAlone(
        robust=Summary.of([0.2, 0.2]), clean=Summary.of([0.8, 0.8]), seconds={"training": 5.0}
    )
    path.with_suffix(".dp_alone.json").write_text(dp_alone.model_dump_json())
    # "nowhere" is no dataset: building a composer would raise
    read, read_name, read_alone = frontier.measure_point(
        "nowhere", "randomized_smoothing", 1.0, profile="quick", seeds=2, cache=tmp_path,
        out=tmp_path, log=lambda message: None,
    )  # fmt: skip
    assert read == record and read_name == name and read_alone == dp_alone
