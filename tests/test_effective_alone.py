"""The effective-alone table's pass rule: margin and lower bound, judged by the verdict rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from defcon.effectiveness import judge, look_confidences, looks
from defcon.vocabulary import Direction, Metric

ROOT = Path(__file__).resolve().parents[1]


def _bench():  # benchmarks/ is not a package
    spec = importlib.util.spec_from_file_location(
        "effective_alone", ROOT / "benchmarks" / "effective_alone.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["effective_alone"] = module
    spec.loader.exec_module(module)
    return module


METRIC = Metric(name="gap", direction=Direction.LOWER, tolerance=0.05, description="a gap")


def _passes(none: list[float], alone: list[float]) -> bool:
    return _bench().passes(judge("d", METRIC, alone, alone, none))


def test_a_gain_of_twice_the_tolerance_with_a_tight_interval_passes() -> None:
    assert _passes([0.30, 0.31, 0.29], [0.10, 0.11, 0.10])


def test_a_gain_equal_to_the_tolerance_fails() -> None:
    assert not _passes([0.15, 0.15, 0.16], [0.10, 0.10, 0.11])


def test_a_large_mean_gain_with_a_loose_interval_fails() -> None:
    assert not _passes([0.30, 0.10, 0.50], [0.10, 0.12, 0.08])


def test_not_applicable_rows_appear_in_the_table() -> None:
    bench = _bench()
    row = bench.Row(dataset="adult", defense="dataset_inference", not_applicable="no overfit")
    assert "not applicable: no overfit" in bench.markdown([row], "")


def test_a_guarantee_gained_entirely_passes() -> None:
    epsilon = Metric(name="epsilon", direction=Direction.LOWER, tolerance=1.0, description="ε")
    inf = float("inf")
    verdict = judge("d", epsilon, [1.3, 1.3, 1.3], [1.3, 1.3, 1.3], [inf, inf, inf])
    assert _bench().passes(verdict)


def test_a_setting_is_validated_and_recorded_in_the_command(tmp_path, monkeypatch) -> None:
    """`--set NAME.FIELD=VALUE` as compose takes it: a wrong one is one parser error (exit 2),
    a right one reaches the composer and the table's footer names it."""
    import pytest

    bench = _bench()
    argv = ["effective_alone.py", "--datasets", "digits", "--defenses", "group_fairness"]
    monkeypatch.setattr(sys, "argv", [*argv, "--set", "group_fairness.bogus=1"])
    with pytest.raises(SystemExit) as refused:
        bench.main()
    assert refused.value.code == 2
    seen = []
    real = bench.Composer
    monkeypatch.setattr(
        bench, "Composer", lambda *a, **k: seen.append(k["configs"]) or real(*a, **k)
    )
    setting = "group_fairness.slack=0.1"
    monkeypatch.setattr(sys, "argv", [*argv, "--set", setting, "--out", str(tmp_path)])
    bench.main()  # group_fairness is not applicable to images: nothing trains
    assert seen == [{"group_fairness": {"slack": 0.1}}]
    assert f"--set {setting}`" in (tmp_path / "table.md").read_text()
    # appending to the folder the run rewrites as it goes would lose the committed table
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path), "--append-to", str(tmp_path)])
    with pytest.raises(SystemExit) as refused:
        bench.main()
    assert refused.value.code == 2


def test_each_row_shows_the_clean_accuracy_without_and_with_the_defense() -> None:
    """A pass bought with accuracy must be visible beside the gain."""
    from defcon.effectiveness import Summary
    from defcon.measure.standalone import StandaloneResult

    bench = _bench()
    result = StandaloneResult(
        defense="d", dataset="adult", profile="quick", seeds=3,
        metrics={"gap": (Summary.of([0.30, 0.31, 0.29]), Summary.of([0.10, 0.11, 0.10]))},
        directions={"gap": Direction.LOWER},
        clean_accuracy=(Summary.of([0.85, 0.86, 0.85]), Summary.of([0.60, 0.61, 0.60])),
        wall_time_s=1.0,
    )  # fmt: skip
    (row,) = bench.rows_of(result, {"gap": METRIC})
    assert row.passed and row.clean_accuracy == "0.853 ± 0.006 → 0.603 ± 0.006"
    assert "| 0.853 ± 0.006 → 0.603 ± 0.006 |" in bench.markdown([row], "")


def test_a_second_seed_set_is_measured_and_named(tmp_path, monkeypatch) -> None:
    """`--seed-start 1000` measures seeds 1000… and the table says so."""
    from defcon.effectiveness import Summary
    from defcon.measure.standalone import StandaloneResult

    bench = _bench()
    calls = []

    def fake(composer, name, seeds, first_seed=0, **_):
        calls.append((name, seeds, first_seed))
        values = Summary.of([0.9, 0.9, 0.9])
        return StandaloneResult(
            defense=name, dataset="digits", profile="quick", seeds=seeds,
            metrics={}, directions={}, clean_accuracy=(values, values), wall_time_s=0.0,
        )  # fmt: skip

    monkeypatch.setattr(bench, "measure_standalone", fake)
    argv = ["effective_alone.py", "--datasets", "digits", "--defenses", "model_watermark"]
    monkeypatch.setattr(sys, "argv", [*argv, "--seed-start", "1000", "--out", str(tmp_path)])
    bench.main()
    assert calls == [("model_watermark", 3, 1000)]
    table = (tmp_path / "table.md").read_text()
    assert "seeds from 1000" in table and "--seed-start 1000`" in table


def _standalone(values_by_count):
    """A fake `measure_standalone` whose alone-arm gap values depend on the seed count."""
    from defcon.effectiveness import Summary
    from defcon.measure.standalone import StandaloneResult

    calls = []

    def measured(seeds, confidence):
        calls.append(seeds)
        none, alone = values_by_count(seeds)
        return StandaloneResult(
            defense="d", dataset="adult", profile="quick", seeds=seeds,
            metrics={"gap": (Summary.of(none), Summary.of(alone))},
            directions={"gap": Direction.LOWER},
            clean_accuracy=(Summary.of(none), Summary.of(alone)), wall_time_s=0.0,
            confidence=confidence,
        )  # fmt: skip

    def fake(composer, name, seeds, first_seed=0, *, max_seeds=None, enough=None):
        """measure_standalone's seed loop (tested on real models in tests/test_arms.py)."""
        schedule = looks(seeds, max_seeds or seeds)
        confidences = look_confidences(schedule)
        result = measured(seeds, confidences[0])
        for look, confidence in zip(schedule[1:], confidences[1:], strict=True):
            if enough is None or enough(result):
                break
            result = measured(look, confidence)
        return result

    return fake, calls


def _rows(monkeypatch, values_by_count, seeds=3, max_seeds=6):
    from defcon.vocabulary import DefenseSpec

    bench = _bench()
    fake, calls = _standalone(values_by_count)
    monkeypatch.setattr(bench, "measure_standalone", fake)
    spec = DefenseSpec.model_validate(
        {"name": "d", "title": "d", "stage": "post", "mitigates": ["discrimination"],
         "metrics": [METRIC.model_dump()]}
    )  # fmt: skip
    return bench.standalone_rows(None, spec, seeds, max_seeds, 0), calls


def test_max_seeds_adds_seeds_while_the_margin_is_still_within_reach(monkeypatch) -> None:
    """A noisy gain of about three tolerances: undecided at 3 seeds, decided with more."""
    gains = [0.25, 0.05, 0.15, 0.16, 0.14, 0.15]

    def values(n):
        return [0.30] * n, [0.30 - g for g in gains[:n]]

    rows, calls = _rows(monkeypatch, values)
    assert calls == [3, 6]  # the looks of 3 up to 6 seeds
    assert rows[0].seeds == calls[-1] and (rows[0].passed or calls[-1] == 6)
    assert f"| {calls[-1]} |" in _bench().markdown(rows, "")


def test_max_seeds_stops_at_a_pass_and_at_a_hopeless_gain(monkeypatch) -> None:
    """No extra seeds once a metric passes, nor when even its upper bound is below the margin."""
    rows, calls = _rows(monkeypatch, lambda n: ([0.30, 0.31, 0.29], [0.10, 0.11, 0.10]))
    assert calls == [3] and rows[0].passed
    rows, calls = _rows(monkeypatch, lambda n: ([0.30, 0.31, 0.30], [0.30, 0.30, 0.31]))
    assert calls == [3] and not rows[0].passed


def test_a_run_is_appended_before_the_status_section_with_its_commit(tmp_path: Path) -> None:
    """--append-to: the rows join table.json with their commit and setting, the block goes in
    before the hand-kept status section, which stays as it was."""
    import json
    import subprocess

    import pytest

    from defcon.errors import DefconError

    bench = _bench()
    folder = tmp_path / "table"
    folder.mkdir()
    (folder / "table.json").write_text(json.dumps([{"defense": "old", "commit": "aaa"}]))
    status = "## Current status\n\n| adult | old | aaa | pass |\n"
    (folder / "table.md").write_text(
        "# Every defense\n\n## Commit aaa: `old`\n\n| x |\n\n" + status
    )
    row = bench.Row(dataset="adult", defense="new", metric="m", gain=0.2, tolerance=0.05,
                    ratio=4.0, passed=True, seeds=3)  # fmt: skip
    bench.append_block(folder, [row], "python benchmarks/effective_alone.py --x", "bbb", "--y 1")
    kept = json.loads((folder / "table.json").read_text())
    assert kept[0] == {"defense": "old", "commit": "aaa"}
    assert kept[1]["defense"] == "new" and kept[1]["commit"] == "bbb"
    assert kept[1]["setting"] == "--y 1"
    text = (folder / "table.md").read_text()
    assert text.endswith(status)
    block = text.index("## Commit bbb: `python benchmarks/effective_alone.py --x`")
    assert text.index("## Commit aaa") < block < text.index("## Current status")
    assert "| adult | new | m |" in text[block:]
    # a block names the commit that produced it: a changed tracked file is refused
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "a@b"], ["config", "user.name", "a"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    (repo / "f.py").write_text("x = 1\n")
    subprocess.run(["git", "-C", str(repo), "add", "f.py"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "f"], check=True)
    assert len(bench.checked_commit(repo)) >= 7
    (repo / "f.py").write_text("x = 2\n")
    with pytest.raises(DefconError, match="tracked files differ"):
        bench.checked_commit(repo)
