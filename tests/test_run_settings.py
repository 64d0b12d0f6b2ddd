"""Training that fits the data: --epochs/--lr/--batch-size, early stopping, `unreliable`."""

from __future__ import annotations

import pytest
from cli_helpers import assert_one_line_error, run
from test_bring_your_own import write_loans

from defcon.errors import DefconError
from defcon.profiles import get_profile
from defcon.reliability import underfit_reasons
from defcon.settings import RunSettings


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
    from defcon.reports import load_record

    (path,) = (out / "records").glob("*.json")
    return result, load_record(path)


def test_an_underfit_verdict_says_unreliable_before_the_table(tmp_path):
    result, record = _compose(tmp_path, "--epochs", "1", "--lr", "0.0001")
    assert record.unreliable and not record.conclusive  # so the benchmark never scores it
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
