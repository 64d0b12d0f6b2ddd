"""The composer's acceptance runs on the real sets (quick profile, 3 seeds): `-m slow`, minutes."""

from __future__ import annotations

from pathlib import Path

import pytest

from defcon.measure.composer import Composer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]


def test_fmnist_watermark_collapses_under_backdoor_pruning(tmp_path: Path) -> None:
    record = Composer("fmnist", profile="quick", cache_dir=tmp_path).compose(
        ["model_watermark", "backdoor_pruning"], seeds=3, force=True
    )
    watermark = record.result("model_watermark").metrics[0]
    assert watermark.alone.mean > 0.9
    assert watermark.outcome == "dropped" and watermark.combined.mean < watermark.alone.mean - 0.3
    assert record.label == "ineffective" and record.predicted["defcon"] == "ineffective"


def test_adult_dp_sgd_and_explanations_both_stay_effective(tmp_path: Path) -> None:
    composer = Composer("adult", profile="quick", cache_dir=tmp_path)
    record = composer.compose(["dp_sgd", "explanations"], seeds=3)
    assert record.label == "effective", record.model_dump_json(indent=1)
    again = Composer("adult", profile="quick", cache_dir=tmp_path)
    assert again.compose(["dp_sgd", "explanations"], seeds=3).results == record.results
    assert again.cache.trained == 0 and again.cache.measured == 0


def test_adult_explanations_stay_effective_behind_a_dawn_api(tmp_path: Path) -> None:
    """The explanations a user is served are unchanged by an output watermark in front."""
    record = Composer("adult", profile="quick", cache_dir=tmp_path).compose(
        ["explanations", "output_watermark"], seeds=3, force=True
    )
    explanations = record.result("explanations")
    assert explanations.outcome == "held", record.model_dump_json(indent=1)
    agreement = next(m for m in explanations.metrics if m.metric == "explained_class_agreement")
    assert agreement.outcome == "diagnostic" and agreement.combined.mean > 0.9
