"""The composer end to end on digits: alone vs combined, cache reuse, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defcon.engine.training import TrainedModel
from defcon.errors import DefconError
from defcon.measure.composer import Composer
from defcon.report.reports import bar_chart, load_record, save_record

pytestmark = pytest.mark.filterwarnings("ignore")


def composer(tmp_path: Path, **kwargs) -> Composer:
    return Composer("digits", profile="tiny", cache_dir=tmp_path / "cache", **kwargs)


def test_conflicting_pair_collapses_the_watermark(tmp_path: Path) -> None:
    c = composer(tmp_path)
    scenarios: list[tuple[frozenset[str], bool]] = []
    real_run = c.run_pipeline

    def spy(pipeline):
        scenarios.append((pipeline.names, pipeline.poisoned))
        return real_run(pipeline)

    c.run_pipeline = spy
    record = c.compose(["backdoor_pruning", "model_watermark"], seeds=3, force=True)
    # every arm (no defense, each alone, combined) ran under the combination's poisoner
    assert {names for names, _ in scenarios} == {
        frozenset(), frozenset({"model_watermark"}), frozenset({"backdoor_pruning"}),
        frozenset({"model_watermark", "backdoor_pruning"}),
    }  # fmt: skip
    assert all(poisoned for _, poisoned in scenarios)
    assert record.order == ("model_watermark", "backdoor_pruning")
    assert record.predicted == {
        "defcon": "ineffective",
        "naive": "effective",
        "factors": "ineffective",
    }
    assert record.scenario == ("model_thief", "poisoner")
    watermark = record.result("model_watermark").metrics[0]
    assert watermark.metric == "watermark_accuracy"
    assert watermark.alone.mean > 0.8  # the watermark works alone
    assert len(watermark.alone.values) == 3 and len(watermark.combined.values) == 3
    assert watermark.no_defense.mean < 0.2  # the same check on an unwatermarked model fails
    assert record.result("model_watermark").outcome == "dropped"
    pruning = record.result("backdoor_pruning").metrics[0]
    # one scenario for every arm: the no-defense model was poisoned too, and pruning helps
    assert pruning.no_defense.mean > 0.5 > pruning.alone.mean
    assert record.label == "ineffective"
    assert record.alternatives  # the planner's conflict-free combinations for the same risks
    assert all(set(a) != {"backdoor_pruning", "model_watermark"} for a in record.alternatives)
    assert 0.5 < record.clean_accuracy_combined.mean <= 1.0
    # the record round-trips through its JSON file and plots
    path = save_record(record, tmp_path / "record.json")
    assert load_record(path) == record
    assert json.loads(path.read_text())["label"] == record.label
    assert bar_chart(record, tmp_path / "plot.png").stat().st_size > 1000


def test_three_defense_composition_and_cache_sharing(tmp_path: Path) -> None:
    first = composer(tmp_path)
    record = first.compose(["explanations", "dp_sgd", "model_watermark"], seeds=1)
    assert record.order == ("model_watermark", "dp_sgd", "explanations")
    assert record.predicted["defcon"] == "effective"
    assert {r.defense for r in record.results} == {"model_watermark", "dp_sgd", "explanations"}
    dp = record.result("dp_sgd")
    assert {m.metric for m in dp.metrics} >= {"mia_auc", "mia_tpr_at_1_fpr", "epsilon"}
    # no defense, combination (pre+in), watermark alone, dp alone, and the tiny profile's two
    # RMIA reference models of the membership attack; explanations reuses no defense
    assert first.cache.trained == 6
    assert first.cache.reused >= 1

    second = composer(tmp_path)  # a new invocation on the same cache
    again = second.compose(["explanations", "dp_sgd", "model_watermark"], seeds=1)
    assert second.cache.trained == 0 and second.cache.measured == 0
    assert again.results == record.results

    third = composer(tmp_path)  # shares the standalone watermark and no-defense models
    third.compose(["model_watermark", "explanations"], seeds=1)
    assert third.cache.trained == 0


def test_interrupted_compose_resumes_without_retraining(tmp_path: Path, monkeypatch) -> None:
    import defcon.measure.pipelines as pipelines_module  # where pipelines' models are trained

    real_train = pipelines_module.train
    calls: list[str] = []

    def flaky_train(env, split, defenses, **kwargs) -> TrainedModel:
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the third training
        calls.append(kwargs.get("description", ""))
        return real_train(env, split, defenses, **kwargs)

    monkeypatch.setattr(pipelines_module, "train", flaky_train)
    with pytest.raises(KeyboardInterrupt):
        composer(tmp_path).compose(["model_watermark", "dp_sgd"], seeds=1)
    monkeypatch.setattr(pipelines_module, "train", real_train)

    resumed = composer(tmp_path)
    resumed.compose(["model_watermark", "dp_sgd"], seeds=1)
    assert resumed.cache.reused >= 2  # the two models finished before the interruption
    # four pipeline models and the membership attack's RMIA reference models (as many as the
    # profile asks for), less the two finished before the interruption
    assert resumed.cache.trained == 4 + resumed.profile.mia_references - 2
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no half-written files


def test_refusals(tmp_path: Path) -> None:
    c = composer(tmp_path)
    with pytest.raises(DefconError, match="Pass --force"):
        c.compose(["model_watermark", "backdoor_pruning"], seeds=1)
    with pytest.raises(DefconError, match="unknown defense 'dp_sdg'.*dp_sgd"):
        c.compose(["dp_sdg", "explanations"], seeds=1)
    with pytest.raises(DefconError, match="at least 1"):
        c.compose(["dp_sgd", "explanations"], seeds=0)
    with pytest.raises(DefconError, match="tolerance given for metric 'robust_accuracy'"):
        c.compose(["dp_sgd", "explanations"], seeds=1, tolerances={"robust_accuracy": 0.1})
    with pytest.raises(DefconError, match="tabular data only"):
        c.compose(["group_fairness", "explanations"], seeds=1)
    with pytest.raises(DefconError, match="unknown dataset 'mnist'"):
        Composer("mnist", cache_dir=tmp_path)
    assert c.cache.trained == 0  # nothing ran before the refusals


def test_models_no_better_than_the_majority_class_are_flagged(make_env) -> None:
    from defcon.measure.composer import degenerate_models

    dataset = make_env("adult").dataset
    majority = float(dataset.test.y.bincount().max()) / len(dataset.test)
    notes = degenerate_models(
        dataset, {"combined": [majority, 0.84], "dp_sgd alone": [majority + 0.05]}
    )
    assert len(notes) == 1 and notes[0].startswith("the combined model is no better")
