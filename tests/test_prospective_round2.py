"""Round 2 of the prospective protocol: the refusal to score after a pre-registered file
changed, and the analysis functions on tiny inputs whose values are checked by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_script

from defcon.bench.run import BenchResult
from defcon.errors import DefconError
from defcon.report.reports import load_record

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks/results/records/adult/adult-quick-seeds0+3to5-dp_sgd+explanations.json"
PATHS = ("defcon/checker", "specs/*.toml", "predictions.json")
READ = ("predictions.json",)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one file under each pre-registered path, committed."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.org")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "defcon/checker").mkdir(parents=True)
    (tmp_path / "defcon/checker/rule.py").write_text("RULE = 1\n")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/a.toml").write_text("name = 'a'\n")
    (tmp_path / "predictions.json").write_text("{}\n")
    (tmp_path / "README.md").write_text("free to change\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "pre-register")
    return tmp_path


def changes(repo: Path) -> list[str]:
    script = load_script("prospective")
    return script.frozen_changes(repo, script.Freeze(paths=PATHS, read=READ, records=("records",)))


def test_score_refuses_without_the_tag_and_after_any_pre_registered_file_changed(repo):
    script = load_script("prospective")
    with pytest.raises(DefconError, match="tag prospective-2 does not exist"):
        changes(repo)
    git(repo, "tag", "prospective-2")
    assert changes(repo) == []
    (repo / "README.md").write_text("changed, not read by the techniques\n")
    git(repo, "commit", "-qam", "docs")
    assert changes(repo) == []
    (repo / "defcon/checker/rule.py").write_text("RULE = 2\n")
    git(repo, "commit", "-qam", "tune the rule")  # committed after the tag
    (repo / "specs/b.toml").write_text("name = 'b'\n")  # a new spec, untracked
    assert changes(repo) == []  # no record made yet: nothing the score reads was shaped by them
    (repo / "records").mkdir()
    (repo / "records/r1.json").write_text("{}\n")  # a record made while they differ
    assert changes(repo) == ["defcon/checker/rule.py", "specs/b.toml"]
    git(repo, "add", "records")
    git(repo, "commit", "-qm", "a record after the tuned rule")
    (repo / "predictions.json").write_text('{"edited": 1}\n')  # read by the score step
    assert changes(repo) == ["defcon/checker/rule.py", "predictions.json"]
    with pytest.raises(DefconError) as refused:
        script.refuse_if_changed(repo, script.Freeze(paths=PATHS, read=READ, records=("records",)))
    message = str(refused.value)
    assert "\n" not in message and "round 2 cannot be scored" in message
    assert "changed since tag prospective-2" in message


def test_frozen_files_may_change_once_the_last_record_entered_git(repo):
    git(repo, "tag", "prospective-2")
    (repo / "records").mkdir()
    (repo / "records/r1.json").write_text("{}\n")
    git(repo, "add", "records")
    git(repo, "commit", "-qm", "the round's records, made under the tagged rules")
    (repo / "defcon/checker/rule.py").write_text("RULE = 2\n")
    (repo / "specs/a.toml").write_text("name = 'a'\nnot_applicable = 1\n")
    git(repo, "commit", "-qam", "a later rule and a later declaration")
    assert changes(repo) == []
    (repo / "predictions.json").write_text('{"edited": 1}\n')  # but never what the score reads
    assert changes(repo) == ["predictions.json"]
    (repo / "predictions.json").write_text("{}\n")
    (repo / "records/r2.json").write_text("{}\n")  # nor a record made under the later rule
    assert changes(repo) == ["defcon/checker/rule.py", "specs/a.toml"]


def test_the_score_step_refuses_before_reading_anything(repo, monkeypatch):
    script = load_script("prospective")
    monkeypatch.setattr(script, "ROOT", repo)
    with pytest.raises(DefconError, match="tag prospective-2 does not exist"):
        script.main(["score", "--round", "2"])
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/prospective.py"), "triples"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().startswith("error:")
    assert "give --round 2" in done.stderr and "Traceback" not in done.stderr


def test_balanced_accuracy_weighted_and_clustered_by_defense():
    script = load_script("prospective")
    measured = ["ineffective", "ineffective", "effective", "effective"]
    predicted = ["ineffective", "effective", "effective", "effective"]
    # recall on conflicts (1·1 + 0·3) / 4 = 0.25; on effective 1: (0.25 + 1) / 2
    assert script.weighted_balanced_accuracy(measured, predicted, [1, 3, 1, 1]) == 0.625
    assert script.weighted_balanced_accuracy(measured, predicted, [0, 0, 2, 0]) == 1.0
    assert script.weighted_balanced_accuracy(measured, predicted, [0, 0, 0, 0]) is None
    clusters = [("a", "b"), ("a", "c"), ("b", "c"), ("c", "d")]
    assert script.clustered_interval(measured, measured, clusters, resamples=200) == (1.0, 1.0)
    lower, upper = script.clustered_interval(measured, predicted, clusters, resamples=400)
    assert 0.0 <= lower <= 0.75 <= upper <= 1.0
    assert script.clustered_interval([], [], []) is None


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_combinations():
    script = load_script("prospective")
    measured = ["ineffective"] * 5 + ["effective"] * 3
    right = list(measured)
    wrong_on_five = ["effective"] * 5 + ["effective"] * 3
    # 5 discordant, all one way: p = 2 · 0.5⁵ = 0.0625
    assert script.mcnemar(measured, right, wrong_on_five) == (5, 0, pytest.approx(0.0625))
    assert script.mcnemar(measured, wrong_on_five, right) == (0, 5, pytest.approx(0.0625))
    one_each = ["effective"] + measured[1:7] + ["ineffective"]
    assert script.mcnemar(measured, one_each, right)[:2] == (0, 2)
    swapped = ["effective"] + measured[1:]
    other = measured[:7] + ["ineffective"]
    assert script.mcnemar(measured, swapped, other) == (1, 1, pytest.approx(1.0))
    assert script.mcnemar(measured, right, right) == (0, 0, 1.0)


def test_every_predicted_chain_is_checked_against_the_measured_factor_shift():
    script = load_script("prospective")
    record = load_record(RECORD)
    entries = [
        {
            "dataset": "adult", "defenses": ["dp_sgd", "explanations"],
            "chains": {"factors": [
                {"mover": "dp_sgd", "factor": "O3", "moved": "down", "dependent": "x",
                 "needed": "up"},
                {"mover": "dp_sgd", "factor": "O3", "moved": "down", "dependent": "y",
                 "needed": "up"},
                {"mover": "dp_sgd", "factor": "loop_model_wrapper", "moved": "up",
                 "dependent": "x", "needed": "down"},
                {"mover": "explanations", "factor": "O3", "moved": "up", "dependent": "x",
                 "needed": "down"},
            ]},
        }
    ]  # fmt: skip
    rows = script.chain_moves(entries, [record])
    assert len(rows) == 3  # the same (dataset, mover, factor, arrow) once
    by = {(row["mover"], row["factor"]): row for row in rows}
    # on Adult the probes measure DP-SGD raising the boundary distance (factor_shift.md)
    assert by[("dp_sgd", "O3")]["as_declared"] in ("no", "no significant shift")
    assert by[("dp_sgd", "loop_model_wrapper")]["as_declared"].startswith("not probed")
    assert "as_declared" in by[("explanations", "O3")]


def test_the_better_order_is_the_one_that_stays_effective():
    script = load_script("prospective")
    record = load_record(RECORD)
    assert record.conclusive
    first = record.model_copy(update={"label": "effective", "order": ("a", "b")})
    second = record.model_copy(update={"label": "ineffective", "order": ("b", "a")})
    assert script.better_order(first, second) == ("a", "b")
    assert script.better_order(second, first) == ("a", "b")
    assert script.better_order(first, first) is None
    unsure = record.model_copy(update={"label": "inconclusive"})
    assert script.better_order(first, unsure) is None


def test_the_analysis_prints_coverage_mcnemar_and_chains_from_the_frozen_file():
    script = load_script("prospective")
    record = load_record(RECORD)
    wrong = "ineffective" if record.label == "effective" else "effective"
    document = {
        "techniques": ["defcon", "factors", "naive"],
        "not_predicting": {"pilot": "pilot is apart"},
        "orders": [],
        "combinations": [{
            "dataset": record.dataset, "defenses": sorted(record.defenses),
            "predicted": {"defcon": record.label, "factors": record.label, "naive": wrong},
            "uncertain": {"defcon": False, "factors": True, "naive": False},
            "chains": {"factors": []},
        }],
    }  # fmt: skip
    text = script.analysis_markdown(document, [record])
    assert "| defcon | 1 | 1.00 [1.00, 1.00] | 1.00 | 1 | 1.00 [1.00, 1.00] |" in text
    assert "| factors | 1 | 1.00 [1.00, 1.00] | 0.00 | 0 | n/a |" in text  # abstained
    assert "| naive | 1 | 0.00 [0.00, 0.00] | 1.00 | 1 |" in text
    assert "| factors | naive | 1 | 0 | 1 |" in text and "| factors | defcon | 0 | 0 | 1 |" in text
    assert "pilot is apart" in text
    counts = {label: int(label == record.label) for label in
              ("effective", "ineffective", "inconclusive", "not_effective_alone")}  # fmt: skip
    unreliable = int(bool(record.unreliable))
    row = (
        f"| {record.dataset} | 1 | 1 | {' | '.join(map(str, counts.values()))} | {unreliable} | 0 |"
    )
    assert row in text  # how much of the round is measured, by label


PREDICTIONS2 = ROOT / "benchmarks/results/prospective2/predictions.json"


@pytest.mark.skipif(not PREDICTIONS2.exists(), reason="round 2 not pre-registered yet")
def test_the_pre_registered_file_lists_what_the_protocol_requires():
    import json

    document = json.loads(PREDICTIONS2.read_text())
    assert "pilot" not in document["techniques"] and "pilot" in document["not_predicting"]
    entries = document["combinations"]
    for dataset in ("fmnist", "adult"):
        mine = [e for e in entries if e["dataset"] == dataset]
        assert sum(e["size"] == 3 for e in mine) >= 15
        for entry in mine:
            assert set(entry["defenses"]) & set(document["new_defenses"])
            for technique in document["techniques"]:
                assert 0.0 <= entry["confidence"][technique] <= 1.0
                assert entry["predicted"][technique] in ("effective", "ineffective")
    for item in document["orders"]:
        assert len(item["orders"]) >= 2 and all(
            item["proposed"][t] in item["orders"] for t in document["techniques"]
        )
    with pytest.raises(DefconError, match="never edited"):
        load_script("prospective").predict_round2(PREDICTIONS2)


def test_measure_runs_each_dataset_on_its_own_predicted_combinations(monkeypatch, tmp_path):
    """A triple drawn for one dataset is not measured on another where it also applies."""
    script = load_script("prospective")
    calls: list[tuple[list[str], list, list, bool, str]] = []

    def fake_run_bench(datasets, pairs, triples, measure=True, order="checker", **_):
        calls.append((list(datasets), list(pairs), list(triples), measure, order))
        return BenchResult(
            records=[], skipped=[], wall_time_s=0.0, executor="local", workers=1, seeds=3,
            profile="quick", pending=0 if measure else len(pairs) + len(triples),
        )  # fmt: skip

    written = []

    monkeypatch.setattr(script, "run_bench", fake_run_bench)
    monkeypatch.setattr("defcon.bench.results.write_results", lambda r, out: written.append(r))
    document = {
        "combinations": [
            {"dataset": "adult", "defenses": ["a", "b"]},
            {"dataset": "adult", "defenses": ["a", "b", "c"]},
            {"dataset": "fmnist", "defenses": ["a", "b", "d"]},
        ],
        "orders": [],
    }
    script.measure(document, workers=1, seeds=3, max_seeds=5, cache=str(tmp_path), out=tmp_path)
    measured = [(d, p, t) for d, p, t, m, _ in calls if m]
    assert measured == [
        (["adult"], [("a", "b")], [("a", "b", "c")]),
        (["fmnist"], [], [("a", "b", "d")]),
    ]
    reported = [(d, p, t) for d, p, t, m, _ in calls if not m]
    assert reported == measured  # the report counts each dataset's own combinations only
    assert written[0].pending == 3
