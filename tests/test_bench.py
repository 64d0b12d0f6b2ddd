"""A tiny bench end to end (3 defenses, digits, 1 seed) under both executors, and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defcon.bench.provenance import source_commit
from defcon.bench.results import results_markdown, write_results
from defcon.bench.run import combinations_for, load_triples, run_bench

pytestmark = pytest.mark.filterwarnings("ignore")

PAIRS = [
    ("model_watermark", "backdoor_pruning"),
    ("model_watermark", "explanations"),
    ("backdoor_pruning", "explanations"),
]


def test_local_bench_end_to_end_and_resume(tmp_path: Path) -> None:
    messages: list[str] = []
    result = run_bench(
        ["digits"], pairs=PAIRS, seeds=1, profile="tiny", workers=2, out=tmp_path,
        log=messages.append,
    )  # fmt: skip
    assert len(result.records) == 3
    labels = {r.order: (r.label, r.predicted["defcon"]) for r in result.records}
    assert labels[("model_watermark", "backdoor_pruning")][1] == "ineffective"
    assert labels[("model_watermark", "explanations")][1] == "effective"
    markdown, plot = write_results(result, tmp_path)
    text = markdown.read_text()
    conclusive = sum(r.conclusive for r in result.records)
    assert f"| digits | defcon | {conclusive} |" in text  # only conclusive labels are scored
    assert "## Measured labels" in text and "## Where the time goes" in text
    assert "model_watermark → backdoor_pruning" in text
    assert plot.stat().st_size > 1000
    (run,) = result.runs  # the measuring run is logged, so a later --report-only can say it
    assert run.combinations_run == 3 and run.workers == 2 and run.wall_time_s > 0
    assert f"3 combinations (seeds from 0) in {run.wall_time_s:.0f} s wall time" in text
    assert run.commit == source_commit()  # the checkout it ran from (None outside one)
    assert run.commit is None or f"code at commit {run.commit}" in text

    # Killed and restarted: only the combination whose record is missing runs again.
    victim = next((tmp_path / "records" / "digits").glob("*model_watermark+explanations*.json"))
    victim.unlink()
    messages.clear()
    again = run_bench(
        ["digits"], pairs=PAIRS, seeds=1, profile="tiny", workers=2, out=tmp_path,
        log=messages.append,
    )  # fmt: skip
    assert "2 already measured, 1 to run" in messages[0]
    assert {r.order for r in again.records} == {r.order for r in result.records}
    rerun = next(r for r in again.records if r.order == ("model_watermark", "explanations"))
    # same workers, same threads per task: its models came from the shared cache (the thread
    # count is part of every cache key, since results may depend on it)
    assert rerun.cache["models_trained"] == 0
    assert [r.combinations_run for r in again.runs] == [3, 1]
    assert not any(m.startswith("note: ") for m in messages)  # every run at this checkout

    # Records of another commit in the folder are resumed, and the log says so.
    import json

    runs = json.loads((tmp_path / "runs.json").read_text())
    runs[0]["commit"] = "0123456789abcdef"
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    victim.unlink()
    messages.clear()
    run_bench(
        ["digits"], pairs=PAIRS, seeds=1, profile="tiny", workers=2, out=tmp_path,
        log=messages.append,
    )  # fmt: skip
    (note,) = [m for m in messages if m.startswith("note: ")]
    assert "2 combinations already measured are kept, not re-measured" in note
    assert "commit 0123456789" in note and "new --out" in note


def test_an_in_process_task_gives_the_callers_threads_back(tmp_path: Path, monkeypatch) -> None:
    from defcon.bench.run import Task, run_task
    from defcon.engine.settings import RunSettings
    from defcon.errors import DefconError
    from defcon.measure.composer import Composer

    def refuse(self, *args, **kwargs):
        assert torch.get_num_threads() == 3  # the task's own setting while it runs
        raise DefconError("cannot run together")

    monkeypatch.setattr(Composer, "compose", refuse)
    before = torch.get_num_threads()
    task = Task(
        settings=RunSettings(dataset="digits", seeds=1, profile="tiny", device="cpu"),
        defenses=("dp_sgd", "explanations"), cache_dir=str(tmp_path),
        record_path=str(tmp_path / "r.json"), threads=3,
    )  # fmt: skip
    assert run_task(task) == "cannot run together"
    assert torch.get_num_threads() == before


def test_ray_bench_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    result = run_bench(
        ["digits"], pairs=PAIRS[1:], seeds=1, profile="tiny", executor="ray", workers=2,
        out=tmp_path,
    )  # fmt: skip
    assert {r.order for r in result.records} == {
        ("model_watermark", "explanations"),
        ("backdoor_pruning", "explanations"),
    }
    assert "## Technique scores" in results_markdown(result)


def test_an_unknown_profile_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from defcon.errors import DefconError

    with pytest.raises(DefconError, match="unknown profile 'nope'"):
        run_bench(["digits"], pairs=PAIRS[:1], profile="nope", out=tmp_path)
    assert not (tmp_path / "records").exists()


def test_combinations_skip_what_does_not_apply() -> None:
    keep, skipped = combinations_for("digits", None, [])
    assert all("group_fairness" not in names for names in keep)
    assert any("group_fairness" in s.defenses and "tabular data only" in s.reason for s in skipped)
    keep_adult, skipped_adult = combinations_for("adult", None, [])
    assert any("group_fairness" in names for names in keep_adult)


def test_committed_triples_file_is_valid() -> None:
    triples = load_triples(Path(__file__).resolve().parent.parent / "benchmarks" / "triples.toml")
    assert len(triples) >= 6
    from defcon.catalog import builtin_catalog

    catalog = builtin_catalog()
    stages = {catalog[n].stage for t in triples for n in t}
    assert len(stages) == 3
    two_post = [t for t in triples if sum(catalog[n].stage.value == "post" for n in t) == 2]
    assert len(two_post) >= 2


def test_report_only_measures_nothing_and_counts_what_is_pending(tmp_path: Path) -> None:
    messages: list[str] = []
    result = run_bench(
        ["digits"], pairs=PAIRS, seeds=1, profile="tiny", out=tmp_path, measure=False,
        log=messages.append,
    )  # fmt: skip
    assert result.records == [] and result.pending == 3
    assert not (tmp_path / "cache").exists()  # nothing trained
    # a combination that could not run together, as a measuring run wrote it down
    folder = tmp_path / "records" / "digits"
    folder.mkdir(parents=True)
    stem = "digits-tiny-seeds0+1to1-model_watermark+explanations"
    (folder / f"{stem}.failed.txt").write_text("cannot compose: reasons\n")
    again = run_bench(["digits"], pairs=PAIRS, seeds=1, profile="tiny", out=tmp_path, measure=False)
    assert again.pending == 2
    assert [f.reason for f in again.failed] == ["cannot compose: reasons"]
    assert "Not measured yet: 2" in results_markdown(again)


def test_defenses_choose_every_pair_among_them(tmp_path: Path) -> None:
    from cli_helpers import run as run_cli

    from defcon.bench.run import pairs_among
    from defcon.errors import DefconError

    assert pairs_among("model_watermark, explanations,backdoor_pruning") == [
        ("backdoor_pruning", "explanations"),
        ("backdoor_pruning", "model_watermark"),
        ("explanations", "model_watermark"),
    ]
    with pytest.raises(DefconError, match="fewer than two"):
        pairs_among("dp_sgd")
    with pytest.raises(DefconError, match="unknown defense 'nosuch'"):
        pairs_among("dp_sgd,nosuch")
    out = tmp_path / "bench"
    both = run_cli("bench", "--datasets", "digits", "--pairs", "dp_sgd+explanations",
                   "--defenses", "dp_sgd,explanations", "--out", str(out))  # fmt: skip
    assert both.exit_code == 2 and "give one of them" in both.output
    pending = run_cli("bench", "--datasets", "digits", "--defenses", "model_watermark,explanations",
                      "--profile", "tiny", "--report-only", "--out", str(out))  # fmt: skip
    assert pending.exit_code == 0, pending.output
    assert "Not measured yet: 1" in (out / "RESULTS.md").read_text()
