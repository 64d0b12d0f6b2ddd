"""The probes of issue 20 ("Fail safe, round two") on user data, user models and user defenses,
kept so a developer can rerun them: `pytest -m slow tests/test_probes_inputs.py`.

Each probe runs the CLI as a careless user would, in a folder of their own, and expects either
one `error:` line (exit 2, no traceback, nothing trained where the problem is in the inputs) or
a correct run (exit 0, a record). The fast tests of the same classes are in
tests/test_inputs_failsafe.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from test_inputs_failsafe import CATALOG, assert_error_line, write_table

from defcon.user_code import DEBUG_ENV

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

MODELS = """import torch
from torch import nn

def build(input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, num_classes))

def raises(input_shape, num_classes):
    raise RuntimeError("factory failed")

def exits(input_shape, num_classes):
    raise SystemExit(0)

class Nan(nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.linear = nn.Linear(features, classes)
    def forward(self, x):
        return self.linear(x) * float("nan")

def nan_logits(input_shape, num_classes):
    return Nan(input_shape[0], num_classes)
"""

DEFENSES = """import torch
from defcon.engine.defense import InTrainingDefense, PostTrainingDefense, PreTrainingDefense

ASR = "attack_success_rate"

class Good(PreTrainingDefense):
    def apply(self, train, env):
        return train
    def measure(self, model, env):
        return {"attack_success_rate": 0.0}

class KeepRows(Good):
    def apply(self, train, env):  # leaves a split one row over a multiple of the batch size
        rows = len(train) - (len(train) - 1) % env.profile.batch_size
        return train.subset(torch.arange(rows))

class ApplyRaises(Good):
    def apply(self, train, env):
        raise KeyError("boom")

class ApplyExits(Good):
    def apply(self, train, env):
        raise SystemExit(0)

class ApplyWrongType(Good):
    def apply(self, train, env):
        return None

class MeasureRaises(Good):
    def measure(self, model, env):
        raise ZeroDivisionError("division by zero")

class MeasureWrongType(Good):
    def measure(self, model, env):
        return [0.0]

class MeasureWrongNamesLiteral(Good):
    def measure(self, model, env):
        return {"asr": 0.0}

class MeasureWrongNamesBuilt(Good):
    def measure(self, model, env):
        return dict.fromkeys(["asr"], 0.0)  # not readable before it runs

class PostWrongType(PostTrainingDefense):
    def apply(self, model, env):
        return "a model"
    def measure(self, model, env):
        return {ASR: 0.0}

class LossRaises(InTrainingDefense):
    def loss_term(self, run, x, y, s, logits):
        raise ValueError("bad loss")
    def measure(self, model, env):
        return {ASR: 0.0}
"""

STAGES = {"PostWrongType": ("post", ""), "LossRaises": ("in", 'slots = ["loss_term"]\n')}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch):
    """The user's folder, the working directory: their model and defense modules, data files."""
    (tmp_path / "probe_models.py").write_text(MODELS)
    (tmp_path / "probe_defenses.py").write_text(DEFENSES)
    (tmp_path / "probe_import_raises.py").write_text("raise RuntimeError('no config')\n")
    (tmp_path / "probe_syntax.py").write_text("def build(:\n")
    (tmp_path / "probe_exit.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    yield tmp_path
    for name in ("probe_models", "probe_defenses", "probe_import_raises", "probe_syntax",
                 "probe_exit"):  # fmt: skip
        sys.modules.pop(name, None)


def _catalog(cls: str) -> list[str]:
    stage, slots = STAGES.get(cls, ("pre", ""))
    text = CATALOG.format(name="probe", implementation=f"probe_defenses:{cls}")
    text = text.replace('stage = "pre"\n', f'stage = "{stage}"\n{slots}')
    Path("probe.toml").write_text(text)
    return ["probe", "model_watermark", "--catalog", "probe.toml"]


def compose(dataset: str, *extra: str, names: list[str] | None = None, out: str = "out"):
    data = ["--dataset", dataset] + (["--target", "y"] if dataset.endswith(".csv") else [])
    return run("compose", *(names or ["model_watermark", "explanations"]), *data, "--profile",
               "tiny", "--seeds", "1", "--out", out, "--force", *extra)  # fmt: skip


def _npz(path: str, rows: int = 72, **replaced) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows + 30, 5))
    y = (x[:, 0] > 0).astype(int)
    arrays = {"x_train": x[:rows], "y_train": y[:rows], "x_test": x[rows:], "y_test": y[rows:]}
    np.savez(path, **{**arrays, **replaced})
    return path


def _nothing_trained(out: str = "out") -> bool:
    return not any(Path(out, "cache").rglob("*.pt")) if Path(out, "cache").exists() else True


# --------------------------------------------------------------------------- user data


def _column(rows: int, value: object, at: int = 5) -> np.ndarray:
    values = np.random.default_rng(3).normal(size=rows).round(3).astype(object)
    values[at] = value
    return values


DATA_PROBES = {
    "inf in a CSV column": (lambda: str(write_table(Path("t.csv"), a=_column(300, "inf"))),
                            ["column 'a'", "infinite"]),
    "duplicate header a,b,y,y": (lambda: str(write_table(Path("t.csv"), header="a,b,y,y")),
                                 ["duplicate column names 'y'"]),
    "a numeric column with one stray string": (
        lambda: str(write_table(Path("t.csv"), a=_column(300, "n/a?"))),
        ["column 'a'", "'n/a?'", "all numbers or categories"]),
    "a continuous target": (
        lambda: str(write_table(Path("t.csv"), y=np.random.default_rng(1).normal(size=300))),
        ["--target 'y'", "continuous"]),
    "a 200,000-value text column": (
        lambda: str(write_table(Path("t.csv"), rows=200_000,
                                b=np.array([f"text {i}" for i in range(200_000)]))),
        ["column 'b'", "200000 distinct values", "at most 256"]),
    "a class only in the test labels": (
        lambda: _npz("t.npz", y_test=np.arange(30) % 3), ["test labels", "class(es) 2"]),
    "complex inputs": (lambda: _npz("t.npz", x_train=np.ones((72, 5)) * (1 + 2j)),
                       ["x_train", "complex"]),
    "a 0-d array": (lambda: _npz("t.npz", y_train=np.array(3)), ["y_train", "0-d"]),
    "NaN in an array": (lambda: _npz("t.npz", x_test=np.full((30, 5), np.nan)),
                        ["x_test", "NaN"]),
}  # fmt: skip


@pytest.mark.parametrize("probe", list(DATA_PROBES))
def test_bad_user_data_is_one_error_before_training(folder: Path, probe: str) -> None:
    make, fragments = DATA_PROBES[probe]
    assert_error_line(compose(make()), *fragments)
    assert _nothing_trained()


def test_a_sensitive_column_with_one_value_is_refused(folder: Path) -> None:
    write_table(Path("t.csv"), s=np.array(["m"] * 300))
    result = compose("t.csv", "--sensitive", "s", names=["group_fairness", "threshold_optimizer"])
    assert_error_line(result, "--sensitive 's'", "1 value")


def test_missing_values_are_dropped_with_a_count_in_a_note_and_the_record(folder) -> None:
    write_table(Path("t.csv"), a=_column(300, ""))
    result = compose("t.csv")
    assert result.exit_code == 0, result.stderr
    assert "note: t.csv: dropped 1 of 300 rows with missing values" in result.stdout
    (record,) = Path("out", "records").glob("*.json")
    notices = json.loads(record.read_text())["notices"]
    assert any("dropped 1 of 300 rows" in n["text"] for n in notices if n["kind"] == "rows_dropped")


def test_a_model_with_nan_logits_is_not_a_success(folder: Path) -> None:
    write_table(Path("t.csv"))
    result = compose("t.csv", "--model", "probe_models:nan_logits")
    assert_error_line(result, "--model 'probe_models:nan_logits'", "non-finite logits")
    assert not Path("out", "records").exists()


# --------------------------------------------------------------------------- batch of one


@pytest.mark.parametrize("make", ["csv100", "csv199", "npz72", "defense"])
def test_a_split_one_row_over_the_batch_size_trains(folder: Path, make: str) -> None:
    names = None
    if make.startswith("csv"):  # 65 % of 100 and of 199 rows: 65 and 129 training rows
        dataset = str(write_table(Path("t.csv"), rows=int(make[3:])))
    else:  # 72 rows less 10 % for validation: 65
        dataset = _npz("t.npz", rows=72 if make == "npz72" else 300)
    if make == "defense":
        names = _catalog("KeepRows")
    result = compose(dataset, "--model", "probe_models:build", names=names)
    assert result.exit_code == 0, result.stderr
    assert list(Path("out", "records").glob("*.json"))


# --------------------------------------------------------------------------- user code


CODE_PROBES = {
    "a module that raises on import": (["--model", "probe_import_raises:build"], None,
                                       ["--model 'probe_import_raises:build'", "no config"]),
    "a module with a syntax error": (["--model", "probe_syntax:build"], None,
                                     ["--model 'probe_syntax:build'", "SyntaxError"]),
    "a module calling sys.exit(0) on import": (["--model", "probe_exit:build"], None,
                                               ["--model 'probe_exit:build'", "SystemExit(0)"]),
    "a factory that raises": (["--model", "probe_models:raises"], None,
                              ["--model 'probe_models:raises'", "factory failed"]),
    "a factory that exits": (["--model", "probe_models:exits"], None,
                             ["--model 'probe_models:exits'", "SystemExit(0)"]),
    "module:attr with no module": (["--model", ":build"], None, ["module:name"]),
    "module:attr relative": (["--model", ".probe_models:build"], None,
                             ["--model '.probe_models:build'"]),
    "module:attr two colons": (["--model", "probe_models:build:x"], None,
                               ["--model 'probe_models:build:x'"]),
    "module:attr with a trailing dot": (["--model", "probe_models:build."], None,
                                        ["--model 'probe_models:build.'"]),
    "module:attr a path": (["--model", "./probe_models.py:build"], None,
                           ["--model './probe_models.py:build'"]),
    "apply raises": ([], "ApplyRaises", ["defense 'probe'", "apply raised KeyError"]),
    "apply exits": ([], "ApplyExits", ["defense 'probe'", "apply raised SystemExit(0)"]),
    "apply returns the wrong type": ([], "ApplyWrongType",
                                     ["defense 'probe'", "apply returned NoneType"]),
    "measure raises": ([], "MeasureRaises", ["defense 'probe'", "measure raised ZeroDivision"]),
    "measure returns the wrong type": ([], "MeasureWrongType",
                                       ["defense 'probe'", "measure returned list"]),
    "measure's names differ (literal)": ([], "MeasureWrongNamesLiteral",
                                         ["returns metrics ['asr']", "declares"]),
    "measure's names differ (built)": ([], "MeasureWrongNamesBuilt",
                                       ["measure returned metrics ['asr']", "declares"]),
    "a post-training apply returns the wrong type": (
        [], "PostWrongType", ["defense 'probe'", "apply returned str, expected Module"]),
    "an in-training hook raises": ([], "LossRaises",
                                   ["defense 'probe'", "loss_term raised ValueError: bad loss"]),
}  # fmt: skip


@pytest.mark.parametrize("probe", list(CODE_PROBES))
def test_failing_user_code_is_one_error_line(folder: Path, probe: str) -> None:
    extra, defense, fragments = CODE_PROBES[probe]
    write_table(Path("t.csv"))
    names = _catalog(defense) if defense else None
    result = compose("t.csv", *extra, names=names)
    assert_error_line(result, *fragments)
    if "literal" in probe or "import" in probe or "module" in probe:
        assert _nothing_trained()


def test_debug_prints_the_traceback_of_user_code(folder: Path) -> None:
    write_table(Path("t.csv"))
    result = run("--debug", "compose", *_catalog("ApplyRaises"), "--dataset", "t.csv",
                 "--target", "y", "--profile", "tiny", "--seeds", "1")  # fmt: skip
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "probe_defenses.py" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: defense 'probe'")
