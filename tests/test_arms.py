"""The one seed × arm loop: compose, the standalone benchmarks and the audit read the same models."""

from __future__ import annotations

from pathlib import Path

import pytest

from defcon.effectiveness import CONFIDENCE
from defcon.measure.arms import COMBINED, Arm, arms_of
from defcon.measure.composer import NO_DEFENSE, Composer
from defcon.measure.standalone import measure_standalone

pytestmark = pytest.mark.filterwarnings("ignore")


def test_arms_are_no_defense_each_alone_and_the_combination() -> None:
    assert arms_of(["a", "b"]) == (
        Arm(NO_DEFENSE, ()), Arm("a", ("a",)), Arm("b", ("b",)), Arm(COMBINED, ("a", "b")),
    )  # fmt: skip
    assert arms_of(["a"]) == (Arm(NO_DEFENSE, ()), Arm("a", ("a",)))  # standalone: no combined
    assert arms_of([]) == (Arm(NO_DEFENSE, ()),)  # the audit of the undefended model


def test_standalone_reads_the_arms_compose_measured(tmp_path: Path) -> None:
    """Same loop, same scenario (no poisoner either way): every model and number is shared."""
    composer = Composer("digits", profile="tiny", cache_dir=tmp_path)
    record = composer.compose(["model_watermark", "explanations"], seeds=1)
    trained, measured = composer.cache.trained, composer.cache.measured
    alone = measure_standalone(composer, "model_watermark", seeds=1)
    assert (composer.cache.trained, composer.cache.measured) == (trained, measured)
    verdict = record.result("model_watermark").metrics[0]
    without, defended = alone.metrics[verdict.metric]
    assert without.values == verdict.no_defense.values
    assert defended.values == verdict.alone.values
    assert alone.clean_accuracy[0] == record.clean_accuracy_no_defense
    assert alone.clean_accuracy[1] == record.result("model_watermark").clean_accuracy_alone


def test_standalone_adds_seeds_until_enough_each_measured_once(tmp_path: Path) -> None:
    """Seeds added one at a time read each seed once: the same cache traffic as asking for that
    many seeds up front (re-measuring from the start per added seed would re-read them)."""
    direct = Composer("digits", profile="tiny", cache_dir=tmp_path / "a")
    fixed = measure_standalone(direct, "model_watermark", seeds=2)
    stepped = Composer("digits", profile="tiny", cache_dir=tmp_path / "b")
    seen: list[int] = []

    def enough(so_far) -> bool:
        seen.append(so_far.seeds)
        return so_far.seeds >= 2

    result = measure_standalone(stepped, "model_watermark", 1, max_seeds=3, enough=enough)
    assert seen == [1, 2] and result.seeds == 2
    assert result.metrics == fixed.metrics and result.clean_accuracy == fixed.clean_accuracy
    assert stepped.cache.stats() == direct.cache.stats()
    unbounded = measure_standalone(stepped, "model_watermark", 1, max_seeds=3)
    assert unbounded.seeds == 1  # without a predicate no seed is added: one look, nominal level
    assert unbounded.confidence == CONFIDENCE and result.confidence > CONFIDENCE  # stricter


def test_compose_reads_verdicts_only_at_its_looks_each_at_its_confidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While undecided, seeds are added up to the next look (1, 2, 4 of at most 4), never judged
    in between, and the record keeps the confidence of the look that ended it."""
    import defcon.measure.composer as composer_module
    from defcon.effectiveness import judge, look_confidences

    seen: list[tuple[int, float]] = []

    def undecided(*args, **kwargs):
        verdict = judge(*args, **kwargs)
        seen.append((len(args[2]), verdict.confidence))
        return verdict.model_copy(update={"outcome": "inconclusive"})

    monkeypatch.setattr(composer_module, "judge", undecided)
    composer = Composer("digits", profile="tiny", cache_dir=tmp_path)
    record = composer.compose(["model_watermark", "explanations"], seeds=1, max_seeds=4)
    looked = list(dict.fromkeys(seen))
    assert [n for n, _ in looked] == [1, 2, 4] and len(record.seeds) == 4
    assert [c for _, c in looked] == pytest.approx(look_confidences((1, 2, 4)))
    assert record.results[0].metrics[0].confidence == pytest.approx(looked[-1][1])
    from defcon.engine.fingerprint import CORE_MODULES, core_code, rule_code

    # the record names the rule it was judged under; the rule is not in the models' cache key
    assert record.code.startswith(core_code()) and record.code.endswith(f"+{rule_code()}")
    assert "effectiveness" not in CORE_MODULES


def test_a_reading_that_runs_the_model_in_training_mode_changes_no_later_reading(
    tmp_path: Path,
) -> None:
    """Each reader gets its own copy of the served model: an attack that runs it in training mode
    updates BatchNorm's running statistics, and a shared object made every later reading (and the
    cached values) depend on the order the readings ran in."""
    import torch

    composer = Composer("digits", profile="tiny", cache_dir=tmp_path)
    result = composer.runner.run_pipeline(composer.pipeline([], 0, True))
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    assert any("running_mean" in k for k in before)  # the model has BatchNorm to disturb
    attacked = result.model.train()
    attacked(result.env.dataset.test.x[:64])  # updates the running statistics of this copy
    after = result.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not all(torch.equal(attacked.state_dict()[k], v) for k, v in before.items())
