"""The entry-point doors and the dataset registry: a package installed beside defcon adds a risk
attack, a technique and a dataset that every command then uses, without a core edit; a broken or
wrong plug-in is one error line; the built-in datasets are each defined once.

The package is a fake installed distribution: a module and its `*.dist-info` (METADATA and
entry_points.txt) in a folder put on `sys.path`, as pip would lay them out in site-packages.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run

from defcon.checker import base as checker_base
from defcon.planning import dataset_info
from defcon.plugins import installed_plugins
from defcon.risks import base as risks_base

pytestmark = pytest.mark.filterwarnings("ignore")

PACKAGE = "defcon_extra_plugin"
MODULE = textwrap.dedent(
    '''
    """A third party's risk attack, technique and dataset for defcon."""
    from typing import ClassVar

    import numpy as np
    import torch

    from defcon.checker import Verdict
    from defcon.engine.data import from_arrays
    from defcon.planning.dataset_info import DatasetEntry, DatasetSizes
    from defcon.risks import RiskAttack, RiskMetric
    from defcon.vocabulary import DataKind, Direction, Risk


    class Overconfidence(RiskAttack):
        """Opacity, read as how sure the model claims to be on the test split."""

        risk: ClassVar[Risk] = Risk.OPACITY
        reference: ClassVar[str] = "a test plug-in"
        metrics: ClassVar[tuple[RiskMetric, ...]] = (
            RiskMetric(name="mean_confidence", riskier=Direction.HIGHER, min_effect=0.05,
                       description="mean top-class probability on the test split"),
        )

        def attack(self, model, env, lab):
            with torch.no_grad():
                probabilities = torch.softmax(model(env.dataset.test.x), dim=1)
            return {"mean_confidence": float(probabilities.max(1).values.mean())}


    class AlwaysEffective:
        name = "always"
        summary = "predicts every combination effective (a test plug-in)"

        def check(self, specs):
            names = tuple(sorted(s.name for s in specs))
            return Verdict(
                technique=self.name, label="effective", defenses=names, order=names,
                stages={}, explanation="a test plug-in says so",
            )


    class Raising(AlwaysEffective):
        name = "raising"

        def check(self, specs):
            raise ZeroDivisionError("a plug-in bug")


    RAISING = Raising()


    ALWAYS = AlwaysEffective()


    def load_blobs(seed, data_dir):
        rng = np.random.default_rng(7)
        centres = np.array([[0.2] * 4, [0.8] * 4])
        y = rng.integers(0, 2, 400)
        x = centres[y] + rng.normal(0, 0.1, (400, 4))
        return from_arrays(x[:300], y[:300], x[300:], y[300:], name="blobs").dataset(seed)


    BLOBS = DatasetEntry(
        name="blobs", loader="defcon_extra_plugin:load_blobs", kind=DataKind.TABULAR,
        num_classes=2, input="4 features", source="two Gaussian blobs (a test plug-in)",
        sizes={"tiny": DatasetSizes(max_train=200, epochs=3)},
    )
    NOT_AN_ENTRY = {"name": "blobs"}
    '''
)


def _install(folder: Path, entry_points: str, monkeypatch) -> None:
    """Lay out the fake distribution in `folder` and put it on `sys.path`."""
    (folder / f"{PACKAGE}.py").write_text(MODULE)
    info = folder / f"{PACKAGE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    monkeypatch.syspath_prepend(str(folder))


@pytest.fixture
def plug(tmp_path, monkeypatch):
    """plug(entry_points.txt text): install the fake package; every registry is restored after."""
    saved = (dict(risks_base.ATTACKS), dict(checker_base.TECHNIQUES),
             dict(dataset_info._PLUGGED))  # fmt: skip

    def install(entry_points: str) -> Path:
        _install(tmp_path, entry_points, monkeypatch)
        installed_plugins.cache_clear()
        return tmp_path

    yield install
    for registry, before in zip(
        (risks_base.ATTACKS, checker_base.TECHNIQUES, dataset_info._PLUGGED), saved, strict=True
    ):
        registry.clear()
        registry.update(before)
    installed_plugins.cache_clear()
    sys.modules.pop(PACKAGE, None)


GOOD = """
    [defcon.risks]
    overconfidence = defcon_extra_plugin:Overconfidence
    [defcon.techniques]
    always = defcon_extra_plugin:ALWAYS
    [defcon.datasets]
    blobs = defcon_extra_plugin:BLOBS
"""


def test_an_installed_technique_is_usable_from_the_cli(plug) -> None:
    plug(GOOD)
    result = run("check", "model_watermark", "backdoor_pruning", "-t", "always", "--json", "-")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["label"] == "effective"
    assert "always" in checker_base.techniques()


def test_an_installed_dataset_is_listed_planned_and_sized(plug) -> None:
    plug(GOOD)
    listed = {d["name"]: d for d in json.loads(run("datasets", "--json", "-").stdout)}
    assert listed["blobs"]["kind"] == "tabular" and listed["blobs"]["available"] == "yes"
    planned = run("plan", "--risks", "evasion", "--dataset", "blobs")
    assert planned.exit_code == 0, planned.stderr
    from defcon.planning.profiles import get_profile

    tiny = get_profile("tiny")
    assert tiny.train_cap("blobs") == 200 and tiny.epochs_for("blobs") == 3
    assert tiny.eval_cap("blobs") == 1000  # not declared: the profile's default
    assert get_profile("quick").train_cap("blobs") is None


def test_an_installed_risk_attack_is_audited_on_an_installed_dataset(plug, tmp_path) -> None:
    plug(GOOD)
    out = tmp_path / "runs"
    result = run("audit", "--dataset", "blobs", "--profile", "tiny", "--seeds", "2",
                 "--risk", "opacity", "--out", str(out), "--json", "-")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "mean_confidence" in result.stdout
    from defcon.risks import unmeasured
    from defcon.vocabulary import Risk

    assert Risk.OPACITY not in unmeasured() and Risk.DATA_MISUSE in unmeasured()


@pytest.mark.parametrize(
    ("entry_points", "fragments"),
    [
        ("[defcon.techniques]\nbad = defcon_extra_plugin:MISSING\n",
         ["plug-in 'bad' of defcon.techniques", "cannot be loaded", "a Technique object"]),
        ("[defcon.techniques]\nbad = no_such_module_anywhere:X\n",
         ["plug-in 'bad'", "ModuleNotFoundError"]),
        ("[defcon.techniques]\nbad = defcon_extra_plugin:BLOBS\n",
         ["plug-in 'bad' of defcon.techniques is refused", "has no name, summary and check"]),
        ("[defcon.techniques]\nraising = defcon_extra_plugin:RAISING\n",
         ["technique 'raising': check raised ZeroDivisionError: a plug-in bug"]),
    ],
)  # fmt: skip
def test_a_broken_or_wrong_technique_plugin_is_one_line(plug, entry_points, fragments) -> None:
    plug(entry_points)
    technique = "raising" if "RAISING" in entry_points else "defcon"
    result = run("check", "model_watermark", "backdoor_pruning", "-t", technique)
    assert_one_line_error(result, *fragments)


@pytest.mark.parametrize(
    ("entry_points", "fragments"),
    [
        ("[defcon.datasets]\nbad = defcon_extra_plugin:NOT_AN_ENTRY\n",
         ["plug-in 'bad' of defcon.datasets is refused", "dict", "a DatasetEntry"]),
        ("[defcon.risks]\nbad = defcon_extra_plugin:ALWAYS\n",
         ["plug-in 'bad' of defcon.risks is refused", "not a RiskAttack subclass"]),
    ],
)  # fmt: skip
def test_a_wrong_dataset_or_risk_plugin_is_one_line(plug, entry_points, fragments) -> None:
    plug(entry_points)
    command = "datasets" if "datasets" in entry_points else "audit"
    args = [command, "--json", "-"] if command == "datasets" else [command, "--profile", "tiny"]
    assert_one_line_error(run(*args), *fragments)


def test_a_plugin_cannot_take_a_built_in_name(plug, tmp_path) -> None:
    plug("[defcon.datasets]\ndigits = defcon_extra_plugin:BLOBS\n")
    (tmp_path / "clash.py").write_text(
        "from defcon_extra_plugin import BLOBS\nDIGITS = BLOBS.model_copy(update={'name': 'digits'})\n"
    )
    (tmp_path / f"{PACKAGE}-0.1.dist-info" / "entry_points.txt").write_text(
        "[defcon.datasets]\ndigits = clash:DIGITS\n"
    )
    installed_plugins.cache_clear()
    assert_one_line_error(run("datasets", "--json", "-"), "dataset 'digits' is already registered")


# --------------------------------------------------------------------------- the registry


def test_each_built_in_dataset_is_defined_once_and_its_loader_agrees() -> None:
    from defcon.engine.data import FMNIST_DIR, FMNIST_FILES, load_dataset
    from defcon.plugins import load_object

    entries = dataset_info.builtin_datasets()
    assert list(entries) == ["digits", "fmnist", "adult", "compas"]
    assert all(callable(load_object(e.loader, "loader")) for e in entries.values())
    digits = load_dataset("digits")
    entry = entries["digits"]
    assert (digits.kind, digits.num_classes, digits.sensitive_attribute) == (
        entry.kind, entry.num_classes, entry.sensitive_attribute,
    )  # fmt: skip
    assert entries["compas"].sensitive_attribute == "race"
    assert [e.name for e in entries.values() if e.reads_data_dir] == ["fmnist"]
    assert FMNIST_DIR == dataset_info.FMNIST_DEFAULT
    assert tuple(FMNIST_FILES.values()) == dataset_info.FMNIST_STEMS


def test_profiles_take_each_datasets_sizes_from_its_entry() -> None:
    """The sizes the profiles held before the registry (cache keys depend on them)."""
    from defcon.planning.profiles import PROFILES

    tiny, quick, paper = PROFILES["tiny"], PROFILES["quick"], PROFILES["paper"]
    assert tiny.max_train == {"fmnist": 1000, "adult": 2000, "compas": 2000, "digits": None,
                              "default": 2000}  # fmt: skip
    assert tiny.max_eval == {"fmnist": 500, "adult": 1000, "compas": 1000, "digits": None,
                             "default": 1000}  # fmt: skip
    assert tiny.epochs == {"default": 4, "digits": 8}
    assert quick.max_train == {"fmnist": 10000, "adult": None, "compas": None, "digits": None}
    assert quick.max_eval == {"fmnist": 2000, "adult": None, "compas": None, "digits": None}
    assert quick.epochs == {"default": 4, "fmnist": 10, "digits": 15, "adult": 5, "compas": 10}
    assert (paper.max_train, paper.max_eval) == ({}, {})
    assert paper.epochs == {"default": 20, "digits": 30}


@pytest.mark.parametrize(
    ("value", "file"), [("x.csv", True), ("X.NPZ", True), ("digits", False), ("a.b/c", False)]
)
def test_file_or_name_is_decided_by_the_suffix(value: str, file: bool) -> None:
    assert dataset_info.is_data_file(value) is file


def test_a_name_with_file_options_is_refused_by_the_one_source_function() -> None:
    from defcon.engine.data import dataset_source
    from defcon.errors import DefconError

    assert dataset_source("digits") == "digits"
    assert dataset_source("digits", target="y", refuse_options=False) == "digits"
    with pytest.raises(DefconError, match="apply to your own .csv/.npz files"):
        dataset_source("digits", target="y")
