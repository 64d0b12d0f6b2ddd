"""Training that fits the data: --epochs/--lr/--batch-size, early stopping, `unreliable`."""

from __future__ import annotations

import pytest
from cli_helpers import assert_one_line_error, run
from test_bring_your_own import write_loans

from defcon.engine.settings import RunSettings
from defcon.errors import DefconError
from defcon.measure.reliability import underfit_reasons
from defcon.planning.profiles import get_profile


def test_settings_override_the_profile_and_change_its_cache_identity():
    quick = get_profile("quick")
    assert RunSettings().applied_to("quick") == quick
    changed = RunSettings(epochs=30, lr=0.01, batch_size=32).applied_to(quick)
    assert changed.epochs_for("adult") == changed.epochs_for("my.csv") == 30
    assert (changed.lr, changed.batch_size) == (0.01, 32)
    assert changed.model_dump() != quick.model_dump()  # the profile is in every cache key


@pytest.mark.parametrize(
    ("values", "option"), [({"epochs": 0}, "--epochs"), ({"lr": -1.0}, "--lr"),
                           ({"batch_size": 0}, "--batch-size")],
)  # fmt: skip
def test_bad_settings_name_the_option(values, option):
    with pytest.raises(DefconError, match=option):
        RunSettings.checked(**values)


def test_bad_epochs_on_the_cli_is_one_line():
    result = run("compose", "dp_sgd", "group_fairness", "--epochs", "0")
    assert_one_line_error(result, "--epochs 0", "--lr")
    result = run("check", "dp_sgd", "group_fairness", "--epochs", "3")
    assert_one_line_error(result, "--technique pilot only")


def test_underfit_reasons():
    converged = [{"training.last_epoch_val_gain": 0.0}]
    assert underfit_reasons(converged, [0.95, 0.96], majority=0.6) == ()
    (reason,) = underfit_reasons([{"training.last_epoch_val_gain": 0.05}], [0.9], 0.6)
    assert "not converged" in reason
    (reason,) = underfit_reasons(converged, [0.61], majority=0.6)
    assert "majority class" in reason
    # one row of a 60-row validation split (0.0167) is noise, not a model still learning
    assert underfit_reasons([{"training.last_epoch_val_gain": 1 / 60}], [0.9], 0.6, 60) == ()
    # an overfit model that swings: a rise no larger than its own fall between epochs is noise
    swinging = {"training.last_epoch_val_gain": 0.014, "training.val_swing": 0.02}
    assert underfit_reasons([swinging], [0.9], 0.6) == ()
    (reason,) = underfit_reasons([{**swinging, "training.val_swing": 0.0}], [0.9], 0.6)
    assert "0.014" in reason and "swing" in reason  # a steady learner never falls: not noise
    # read over the seeds, as the verdict is: one seed's noise gain among converged ones is not
    # a recipe still learning, nor is one weak model among clearly better ones
    one_gains = [{"training.last_epoch_val_gain": 0.012}] + converged * 4
    assert underfit_reasons(one_gains, [0.9] * 5, 0.6) == ()
    all_gain = [{"training.last_epoch_val_gain": 0.03}] * 4 + converged
    (reason,) = underfit_reasons(all_gain, [0.9] * 5, 0.6)
    assert "0.024" in reason and "mean over 5 seed(s)" in reason
    assert underfit_reasons(converged, [0.61, 0.9, 0.9, 0.9], majority=0.6) == ()
    (reason,) = underfit_reasons(converged, [0.61, 0.62, 0.63], majority=0.6)
    assert "0.620, mean over 3 seed(s)" in reason
    # epochs chosen by early stopping: its best epoch gained by construction; only the cap counts
    still_learning = [{"training.last_epoch_val_gain": 0.05}]
    stopped = {"early_stopping.epochs_run": 53.0, "early_stopping.cap": 200.0}
    assert underfit_reasons(still_learning, [0.9], 0.6, early_stopping=stopped) == ()
    capped = {"early_stopping.epochs_run": 200.0, "early_stopping.cap": 200.0}
    (reason,) = underfit_reasons(still_learning, [0.9], 0.6, early_stopping=capped)
    assert "cap of 200 epochs" in reason


def _compose(tmp_path, *extra: str):
    write_loans(tmp_path / "loans.csv", rows=400)
    out = tmp_path / "out"
    result = run(
        "compose", "dp_sgd", "group_fairness", "--dataset", str(tmp_path / "loans.csv"),
        "--target", "approved", "--sensitive", "sex", "--profile", "tiny", "--seeds", "2",
        "--out", str(out), "--device", "cpu", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    from defcon.report.reports import load_record

    (path,) = (out / "records").glob("*.json")
    return result, load_record(path)


def test_an_underfit_verdict_says_unreliable_before_the_table(tmp_path):
    result, record = _compose(tmp_path, "--epochs", "1", "--lr", "0.0001")
    assert record.unreliable and not record.conclusive  # so the benchmark never scores it
    gains = record.undefended_facts["training.last_epoch_val_gain"]  # what the check read
    assert len(gains.values) == len(record.seeds) == 2
    assert record.training["epochs"] == 1 and record.training["lr"] == 0.0001
    assert "early_stopping.best_epoch" not in record.training  # --epochs given: no fitting
    text = result.stdout
    assert text.index("unreliable") < text.index("no defense")


def test_user_data_trains_with_early_stopping_by_default(tmp_path):
    _, record = _compose(tmp_path)
    best = record.training["early_stopping.best_epoch"]
    assert record.training["epochs"] == best >= 1
    assert record.training["early_stopping.epochs_run"] == best + 10  # patience 10
    assert record.training["early_stopping.epochs_run"] <= 200


# --------------------------------------------------------------------------- one RunSettings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"seeds": 0}, "--seeds must be at least 1, got 0"),
        ({"seeds": 2, "max_seeds": 1}, "--max-seeds (1) must be at least --seeds (2)"),
        ({"seed_start": -1}, "--seed-start must be ≥ 0, got -1"),
        ({"profile": "huge"}, "unknown profile 'huge'"),
        ({"kind": "video"}, "--kind 'video' is not accepted; expected image or tabular"),
        ({"seeds": "many"}, "--seeds many is not accepted (input should be a valid integer"),
        ({"colour": "red"}, "unknown run setting 'colour'; accepted: dataset, seeds"),
        ({"seeds": 0, "epochs": 0}, "--seeds must be at least 1"),  # the first field first
    ],
)
def test_settings_are_checked_once_naming_the_option_and_what_is_accepted(values, message):
    import re

    with pytest.raises(DefconError, match=re.escape(message)):
        RunSettings.checked(**values)


def test_settings_are_frozen_and_the_seed_cap_defaults_to_the_seeds():
    from pydantic import ValidationError

    settings = RunSettings.checked(seeds=2)
    assert settings.most_seeds == 2 and RunSettings(seeds=2, max_seeds=5).most_seeds == 5
    with pytest.raises(ValidationError):
        settings.seeds = 4  # type: ignore[misc]


def test_resolved_checks_what_needs_io_and_the_cli_settings_override_the_apis():
    settings = RunSettings(device="auto", configs={"dp_sgd": {"noise_multiplier": 0.8}})
    resolved = settings.resolved(["dp_sgd.noise_multiplier=1.2", "dp_sgd.max_grad_norm=2"])
    assert resolved.device in {"cpu", "cuda:0"}  # concrete: bench workers get it as is
    assert resolved.configs == {"dp_sgd": {"noise_multiplier": 1.2, "max_grad_norm": 2.0}}
    assert settings.resolved().configs == {"dp_sgd": {"noise_multiplier": 0.8}}
    with pytest.raises(DefconError, match="--device 'tpu'"):
        RunSettings(device="tpu").resolved()
    with pytest.raises(DefconError, match="has no setting 'sigma'"):
        RunSettings(configs={"dp_sgd": {"sigma": 1.0}}).resolved()
    with pytest.raises(DefconError, match="apply to your own .csv/.npz files"):
        RunSettings(target="label").source()


def test_every_run_option_is_declared_once_for_compose_audit_and_bench():
    from typer.main import get_command

    from defcon.cli.main import RUN_OPTIONS, app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    for name, left_out in (("compose", set()), ("audit", {"max_seeds"}), ("bench", {"dataset"})):
        params = {p.name for p in commands[name].params}
        assert set(RUN_OPTIONS) - left_out <= params, name
        assert not left_out & params, name
    fields = set(RunSettings.model_fields)
    assert set(RUN_OPTIONS) - {"set_values", "settings_file"} <= fields
    assert fields - set(RUN_OPTIONS) == {"configs"}  # filled by --set and --settings


@pytest.mark.parametrize("command", [["compose"], ["audit"], ["bench", "--datasets", "digits"]])
def test_a_bad_run_option_is_one_line_on_every_command(tmp_path, command):
    result = run(*command, "--kind", "video", "--out", str(tmp_path))
    assert_one_line_error(result, "--kind 'video' is not accepted", "image or tabular")
    result = run(*command, "--seed-start", "-2", "--out", str(tmp_path))
    assert_one_line_error(result, "--seed-start must be ≥ 0, got -2")


def test_the_composer_and_auditor_take_their_seeds_from_the_settings(tmp_path):
    from defcon.audit.auditor import Auditor
    from defcon.measure.composer import Composer

    settings = RunSettings(profile="tiny", seeds=2, max_seeds=4, seed_start=7, device="cpu")
    composer = Composer.from_settings(settings, cache_dir=tmp_path)
    assert composer.settings is settings and composer.profile.name == "tiny"
    plan = composer.seed_plan(None)
    assert (plan.seeds, plan.most_seeds, plan.seed_start) == (2, 4, 7)
    assert composer.seed_plan(3, None, 0).seed_start == 0  # a value given wins
    plain = Composer("digits", profile="tiny", cache_dir=tmp_path).seed_plan(None)
    assert (plain.seeds, plain.most_seeds, plain.seed_start) == (3, 3, 0)
    with pytest.raises(DefconError, match="--seeds must be at least 1"):
        Auditor(composer).audit([], seeds=0)


def test_bench_takes_the_settings_or_their_fields(tmp_path):
    from defcon.bench.run import run_bench

    pair = [("model_watermark", "explanations")]
    settings = RunSettings(seeds=1, profile="tiny", device="cpu")
    given = run_bench(["digits"], settings, pairs=pair, out=tmp_path, measure=False)
    keywords = run_bench(["digits"], pairs=pair, out=tmp_path, measure=False, seeds=1,
                         profile="tiny")  # fmt: skip
    assert given.pending == keywords.pending == 1 and given.profile == "tiny"
    with pytest.raises(TypeError, match="not both"):
        run_bench(["digits"], settings, out=tmp_path, measure=False, seeds=2)
    with pytest.raises(DefconError, match="--seeds must be at least 1"):
        run_bench(["digits"], out=tmp_path, seeds=0)


def test_committed_records_still_load_with_the_shared_header():
    from pathlib import Path

    from defcon.audit.auditor import AuditRecord
    from defcon.planning.records import CompositionRecord, RecordHeader

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    composition = next((root / "records" / "adult").glob("*.json"))
    record = CompositionRecord.model_validate_json(composition.read_text())
    audit_path = root / "unintended" / "records" / "adult-quick-seeds3-data_watermark.json"
    audit = AuditRecord.model_validate_json(audit_path.read_text())
    for loaded in (record, audit):
        assert isinstance(loaded, RecordHeader) and loaded.dataset == "adult"
    assert record.schema_version == 1 and "schema_version" in record.model_dump()
    assert "schema_version" not in audit.model_dump()  # an audit record writes none (as before)
    assert list(audit.model_dump())[:5] == ["defenses", "order", "dataset", "profile", "seeds"]


def test_bench_tasks_carry_the_settings_unchanged_but_for_their_dataset(tmp_path, monkeypatch):
    import defcon.bench.run as bench

    seen: list = []
    monkeypatch.setattr(bench, "_run_local", lambda tasks, workers, report: seen.extend(tasks))
    settings = RunSettings(seeds=1, profile="tiny", device="cpu", epochs=2, target="label")
    bench.run_bench(["digits"], settings, pairs=[("model_watermark", "explanations")], out=tmp_path)
    (task,) = seen
    # a built-in dataset ignores the options that read a user's file, as before
    assert task.settings == settings.model_copy(update={"target": None})
    assert "-epochs2-" in task.record_path  # the training override names the record
