"""Fail safe on the user's inputs, one test per class of issue 20 part B: user data is checked
before training (defcon/engine/data_checks.py), a model's non-finite logits fail the run, a last batch
of one row never reaches BatchNorm, user code fails behind one boundary (defcon/user_code.py),
and metric names are checked when a plug-in is loaded. The examples of the issue, run through
the CLI, are in tests/test_probes_inputs.py (slow)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run
from torch import nn

from defcon.engine.data import Split, from_arrays, read_csv, read_npz
from defcon.engine.data_checks import MAX_CATEGORIES
from defcon.errors import DefconError
from defcon.user_code import DEBUG_ENV

pytestmark = pytest.mark.filterwarnings("ignore")


def write_table(path: Path, rows: int = 300, header: str = "a,b,s,y", **columns) -> Path:
    """A small CSV: a number `a`, a category `b`, a group `s` and a label `y` (overridable)."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=rows).round(3)
    data = {
        "a": a.astype(object),
        "b": rng.choice(["u", "v", "w"], rows),
        "s": rng.choice(["f", "m"], rows),
        "y": np.where(a > 0, "yes", "no"),
    }
    data.update(columns)
    lines = [header] + [",".join(str(data[k][i]) for k in "absy") for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _with(values: np.ndarray, row: int, value: object) -> np.ndarray:
    changed = values.astype(object).copy()
    changed[row] = value
    return changed


def test_a_bad_table_is_refused_before_encoding_naming_the_column(tmp_path: Path) -> None:
    a = np.random.default_rng(3).normal(size=300).round(3)
    cases = [  # (columns, fragments of the one error)
        ({"a": _with(a, 5, "inf")}, ["column 'a'", "infinite", "finite numbers"]),
        ({"a": _with(a, 7, "oops")}, ["column 'a'", "'oops'", "all numbers or categories"]),
        ({"b": np.array([f"id{i}" for i in range(300)])},
         ["column 'b'", "300 distinct values", f"at most {MAX_CATEGORIES}"]),
        ({"y": np.random.default_rng(0).normal(size=300).round(4)},
         ["--target 'y'", "non-integer", "continuous"]),
        ({"s": np.array(["m"] * 300)}, ["--sensitive 's'", "1 value", "at least two"]),
    ]  # fmt: skip
    for columns, fragments in cases:
        path = write_table(tmp_path / "table.csv", **columns)
        with pytest.raises(DefconError) as caught:
            read_csv(path, "y", sensitive="s")
        assert all(f in str(caught.value) for f in fragments), (fragments, caught.value)
    duplicated = write_table(tmp_path / "dup.csv", header="a,b,y,y")
    with pytest.raises(DefconError, match="duplicate column names 'y'"):
        read_csv(duplicated, "y")
    # through the CLI: one error line, exit 2, and nothing trained
    path = write_table(tmp_path / "table.csv", a=_with(a, 5, "inf"))
    out = tmp_path / "out"
    result = run("compose", "model_watermark", "explanations", "--dataset", str(path),
                 "--target", "y", "--profile", "tiny", "--out", str(out))  # fmt: skip
    assert_one_line_error(result, "column 'a'", "infinite")
    assert not (out / "cache").exists()


def test_missing_cells_drop_their_rows_and_say_how_many(tmp_path: Path) -> None:
    a = np.random.default_rng(3).normal(size=300).round(3)
    path = write_table(tmp_path / "table.csv", a=_with(_with(a, 3, ""), 9, "NaN"))
    data = read_csv(path, "y")
    assert [n.text for n in data.notices if n.kind == "rows_dropped"] == [
        f"{path}: dropped 2 of 300 rows with missing values (in columns a); defcon does not impute",
    ]
    assert len(data.y["train"]) == 298
    full = read_csv(write_table(tmp_path / "full.csv"), "y")
    assert not [n for n in full.notices if n.kind == "rows_dropped"]


def test_bad_arrays_are_refused_naming_the_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    nan = x.copy()
    nan[4, 1] = np.nan
    cases = [  # (arrays replacing the good ones, fragments of the one error)
        ({"x_train": x + 1j}, ["x_train", "complex", "accepted: booleans, integers or floats"]),
        ({"x_train": np.array(1.0)}, ["x_train", "0-d"]),
        ({"x_test": nan}, ["x_test", "1 NaN", "row 4"]),
        ({"y_train": np.where(y == 1, np.inf, 0.0)}, ["y_train", "infinite"]),
        ({"y_train": rng.normal(size=40)}, ["y_train", "non-integer", "continuous"]),
        ({"y_test": np.arange(40) % 3}, ["test labels", "class(es) 2", "no training row"]),
        ({"s_train": np.zeros(40), "s_test": np.arange(40) % 2}, ["s_train", "1 value"]),
    ]
    for replaced, fragments in cases:
        arrays = {"x_train": x, "y_train": y, "x_test": x, "y_test": y, **replaced}
        np.savez(tmp_path / "data.npz", **arrays)
        with pytest.raises(DefconError) as caught:
            read_npz(tmp_path / "data.npz")
        assert all(f in str(caught.value) for f in fragments), (fragments, caught.value)
    # float labels that are whole numbers are classes
    assert from_arrays(x, y.astype(float), x, y.astype(float)).num_classes == 2


def test_a_class_missing_from_a_seeds_training_rows_is_refused_for_that_seed() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    y_rare = y.copy()
    y_rare[0] = 2  # one row of class 2: on some seed it lands in validation only
    data = from_arrays(x, y_rare, x[:10], y[:10])
    refused = 0
    for seed in range(20):
        try:
            data.dataset(seed)
        except DefconError as error:
            assert f"on seed {seed}" in str(error) and "class(es) 2" in str(error)
            refused += 1
    assert 0 < refused < 20


def _bn_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_shape[0], 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Linear(8, num_classes))  # fmt: skip


def _nan_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    class Nan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(input_shape[0], num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) * float("nan")

    return Nan()


def _tiny_env(rows: int, factory: str):
    from defcon.engine.defense import Environment
    from defcon.engine.models import arch_for
    from defcon.planning.profiles import get_profile

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows + 40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    dataset = from_arrays(x[:rows], y[:rows], x[rows:], y[rows:]).dataset(0)
    dataset = dataclasses.replace(
        dataset, train=Split(torch.as_tensor(x[:rows]), torch.as_tensor(y[:rows]))
    )
    profile = get_profile("tiny").model_copy(update={"epochs": {"default": 1}})
    env = Environment(dataset=dataset, seed=0, profile=profile)
    env.arch = arch_for(dataset, width=8, factory=factory)
    return env


def test_a_model_with_non_finite_logits_fails_naming_the_factory() -> None:
    from defcon.engine.training import train

    env = _tiny_env(64, f"{__name__}:_nan_model")
    with pytest.raises(DefconError, match=rf"--model '{__name__}:_nan_model'.*non-finite logits"):
        train(env, env.dataset.train)


@pytest.mark.parametrize("rows", [65, 129, 66])
def test_a_last_batch_of_one_row_never_reaches_batchnorm(rows: int) -> None:
    from defcon.engine.training import train

    split = Split(torch.randn(rows, 4), torch.arange(rows) % 2)
    sizes = [len(y) for _, y, _ in split.loader(64, shuffle=True, seed=1)]
    assert sum(sizes) == rows and min(sizes) >= 2
    plain = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*split.tensors()), batch_size=64, shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    expected = [b[1] for b in plain]
    if rows % 64 == 1:  # the single row joins the batch before it, in the same order
        expected[-2:] = [torch.cat(expected[-2:])]
    got = [b[1] for b in split.loader(64, shuffle=True, seed=1)]
    assert len(got) == len(expected) and all(map(torch.equal, got, expected))
    env = _tiny_env(rows, f"{__name__}:_bn_mlp")
    assert train(env, env.dataset.train).model is not None


USER_MODEL = """from torch import nn
def build(input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes)
def broken(input_shape, num_classes):
    raise ValueError("no such layer")
"""
USER_DEFENSE = """import torch
from defcon.engine.defense import PreTrainingDefense
class Raises(PreTrainingDefense):
    def apply(self, train, env):
        raise KeyError("boom")
    def measure(self, model, env):
        return {"attack_success_rate": 0.0}
class WrongType(PreTrainingDefense):
    def apply(self, train, env):
        return [train]
    def measure(self, model, env):
        return {"attack_success_rate": 0.0}
class WrongMetric(PreTrainingDefense):
    def apply(self, train, env):
        return train
    def measure(self, model, env):
        return {"asr": 0.0}
"""
CATALOG = """[[defense]]
name = "{name}"
title = "a user's defense"
stage = "pre"
mitigates = ["poisoning"]
threats = ["poisoner"]
implementation = "{implementation}"
[[defense.metrics]]
name = "attack_success_rate"
direction = "lower"
tolerance = 0.05
"""


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch):
    """A folder of the user's own modules, the working directory (their modules import from it)."""
    modules = {"inputs_model": USER_MODEL, "inputs_defense": USER_DEFENSE,
               "inputs_on_import": "raise RuntimeError('configuration missing')\n",
               "inputs_syntax": "def build(:\n", "inputs_exit": "raise SystemExit(0)\n"}  # fmt: skip
    for name, text in modules.items():
        (tmp_path / f"{name}.py").write_text(text)
    write_table(tmp_path / "table.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DEBUG_ENV, "")  # recorded, so teardown undoes what `--debug` sets
    yield tmp_path
    for name in modules:
        sys.modules.pop(name, None)


def assert_error_line(result, *fragments: str) -> None:
    """Exit 2, no traceback, and one `error:` line naming each fragment, the last on stderr
    (progress lines of a run that started may come before it)."""
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], result.stderr
    assert all(fragment in errors[0] for fragment in fragments), (fragments, errors[0])


def _compose(*extra: str, defense: str | None = None):
    names = ["model_watermark", "explanations"]
    if defense is not None:
        Path("user.toml").write_text(
            CATALOG.format(name="user_defense", implementation=f"inputs_defense:{defense}")
        )
        names = ["user_defense", "model_watermark", "--catalog", "user.toml"]
    return run("compose", *names, "--dataset", "table.csv", "--target", "y", "--profile",
               "tiny", "--seeds", "1", *extra)  # fmt: skip


def test_user_code_fails_behind_one_boundary_with_one_line(user_folder: Path) -> None:
    cases = [  # (extra arguments, user defense, fragments of the one error)
        (["--model", "inputs_on_import:build"], None,
         ["--model 'inputs_on_import:build'", "RuntimeError: configuration missing"]),
        (["--model", "inputs_syntax:build"], None, ["--model 'inputs_syntax:build'", "SyntaxError"]),
        (["--model", "inputs_exit:build"], None, ["--model 'inputs_exit:build'", "SystemExit(0)"]),
        (["--model", "inputs_model:broken"], None,
         ["--model 'inputs_model:broken'", "ValueError: no such layer"]),
        (["--model", ".inputs_model:build"], None, ["--model '.inputs_model:build'"]),
        (["--model", "inputs_model:build:x"], None, ["--model 'inputs_model:build:x'"]),
        ([], "Raises", ["defense 'user_defense'", "apply raised KeyError: 'boom'"]),
        ([], "WrongType", ["defense 'user_defense'", "apply returned list, expected Split"]),
    ]  # fmt: skip
    for extra, defense, fragments in cases:
        assert_error_line(_compose(*extra, defense=defense), *fragments)
    debug = run("--debug", "compose", "model_watermark", "explanations", "--dataset", "table.csv",
                "--target", "y", "--model", "inputs_model:broken")  # fmt: skip
    assert debug.exit_code == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: --model")


def test_a_metric_name_mismatch_is_caught_when_the_plugin_loads(user_folder: Path) -> None:
    from defcon.catalog import builtin_catalog, load_catalog_file
    from defcon.engine.defense import returned_metric_names
    from defcon.engine.registry import defense_class

    result = _compose("--out", "out", defense="WrongMetric")
    assert_error_line(result, "WrongMetric.measure returns metrics ['asr']",
                          "declares ['attack_success_rate']")  # fmt: skip
    assert not (user_folder / "out" / "cache").exists()  # before any training
    spec = load_catalog_file("user.toml")[0]
    with pytest.raises(DefconError, match="returns metrics"):
        defense_class(spec)
    # a class may declare its names instead (measure building its dict some other way)
    from inputs_defense import WrongMetric

    WrongMetric.metric_names = ("attack_success_rate",)
    assert defense_class(spec) is WrongMetric
    for builtin in builtin_catalog().values():  # the installed defenses pass the same check
        if builtin.implementation is not None:
            assert (
                defense_class(builtin).metric_names
                or returned_metric_names(defense_class(builtin))
                or builtin.name == "dp_sgd"
            )
