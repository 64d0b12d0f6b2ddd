"""`compose --save-model DIR` and `defcon.load_pipeline`: the defended model round-trips, serving
exactly what the composer measured, and nothing unsafe or dishonest is written or loaded."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import assert_one_line_error, run
from torch import nn

import defcon
from defcon.engine.defense import ServingWrapper
from defcon.engine.models import accuracy
from defcon.errors import DefconError
from defcon.measure.artefact import MANIFEST, SERVING, WEIGHTS, read_manifest, served_layers
from defcon.measure.composer import Composer
from defcon.measure.pipelines import Pipeline, PipelineResult
from pipeline_stages.fairness import equalized_odds_gap

pytestmark = pytest.mark.filterwarnings("ignore")


class Saved:
    """A one-seed tiny composition saved to a folder, with the served models it measured."""

    def __init__(self, root: Path, dataset: str, names: Sequence[str]) -> None:
        self.composer = Composer(dataset, profile="tiny", cache_dir=root / "cache")
        self.measured: list[PipelineResult] = []
        original = self.composer.run_pipeline

        def spy(pipeline: Pipeline) -> PipelineResult:
            result = original(pipeline)
            if pipeline.names == set(names) and not self.measured:
                self.measured.append(result)  # the first: the one the arms measured
            return result

        self.composer.run_pipeline = spy  # type: ignore[method-assign]
        self.folder = root / "saved"
        self.record = self.composer.compose(names, seeds=1, save_model=self.folder)
        self.test = self.composer.dataset(0).test

    @property
    def served(self) -> nn.Module:
        return self.measured[0].model  # built (and measured) during compose


@pytest.fixture(scope="module")
def dp_pair(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return Saved(tmp_path_factory.mktemp("dp"), "digits", ["model_watermark", "dp_sgd"])


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return Saved(tmp_path_factory.mktemp("api"), "digits", ["output_watermark", "explanations"])


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return Saved(
        tmp_path_factory.mktemp("fair"), "compas", ["model_watermark", "threshold_optimizer"]
    )


def same_outputs(saved: Saved) -> nn.Module:
    loaded = defcon.load_pipeline(saved.folder)
    served = saved.served.eval()
    with torch.no_grad():
        assert torch.equal(loaded(saved.test.x), served(saved.test.x))
    return loaded


def test_dp_pair_round_trips_with_identical_outputs(dp_pair: Saved) -> None:
    loaded = same_outputs(dp_pair)
    manifest = read_manifest(dp_pair.folder)
    assert sorted(p.name for p in dp_pair.folder.iterdir()) == [MANIFEST, WEIGHTS]
    assert manifest.arch.norm == "group"  # DP-SGD's GroupNorm is part of what is shipped
    assert manifest.order == dp_pair.record.order and manifest.layers == ()
    assert manifest.configs["dp_sgd"] == dp_pair.composer.defense("dp_sgd").config.model_dump(
        mode="json"
    )
    assert manifest.label == dp_pair.record.label and manifest.measured
    assert (
        manifest.record["clean_accuracy_combined"]
        == dp_pair.record.model_dump(mode="json")["clean_accuracy_combined"]
    )
    # the reading the record holds is the loaded model's own
    assert accuracy(loaded, dp_pair.test.x, dp_pair.test.y) == manifest.clean_accuracy
    assert manifest.clean_accuracy == pytest.approx(dp_pair.record.clean_accuracy_combined.mean)


def test_serving_wrappers_round_trip(wrapped: Saved) -> None:
    loaded = same_outputs(wrapped)
    manifest = read_manifest(wrapped.folder)
    assert [layer.defense for layer in manifest.layers] == ["explanations", "output_watermark"]
    assert type(loaded).__name__ == "WatermarkedAPI" and SERVING not in manifest.files
    explained, served_explained = loaded.model, wrapped.served.model
    x = wrapped.test.x[:3]
    assert explained.n_steps == served_explained.n_steps
    assert torch.allclose(explained.explain(x), served_explained.explain(x))


def test_threshold_optimizer_round_trips_with_its_fairness(fair: Saved) -> None:
    loaded = same_outputs(fair)
    manifest = read_manifest(fair.folder)
    assert SERVING in manifest.files and manifest.layers[0].defense == "threshold_optimizer"
    result = next(r for r in fair.record.results if r.defense == "threshold_optimizer")
    (verdict,) = result.metrics
    assert equalized_odds_gap(loaded, fair.test) == pytest.approx(verdict.combined.mean)


def copy_of(saved: Saved, root: Path) -> Path:
    folder = root / "copy"
    shutil.copytree(saved.folder, folder)
    return folder


def edit_manifest(folder: Path, **changes: Any) -> None:
    data = json.loads((folder / MANIFEST).read_text())
    data.update(changes)
    (folder / MANIFEST).write_text(json.dumps(data))


def test_tampered_weights_are_refused(dp_pair: Saved, tmp_path: Path) -> None:
    folder = copy_of(dp_pair, tmp_path)
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-20] ^= 1
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(DefconError, match="weights.pt does not match the SHA-256"):
        defcon.load_pipeline(folder)


def test_tampered_serving_state_is_refused(fair: Saved, tmp_path: Path) -> None:
    folder = copy_of(fair, tmp_path)
    (folder / SERVING).write_bytes((folder / SERVING).read_bytes() + b"x")
    with pytest.raises(DefconError, match="serving.pt does not match"):
        defcon.load_pipeline(folder)


def test_bad_folders_and_manifests_are_refused(dp_pair: Saved, tmp_path: Path) -> None:
    with pytest.raises(DefconError, match="no saved defcon pipeline"):
        defcon.load_pipeline(tmp_path)
    folder = copy_of(dp_pair, tmp_path)
    edit_manifest(folder, schema_version=99)
    with pytest.raises(DefconError, match="schema_version 99"):
        defcon.load_pipeline(folder)
    edit_manifest(folder, schema_version=1, order=5)
    with pytest.raises(DefconError, match="not a valid manifest"):
        defcon.load_pipeline(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(DefconError, match="cannot read"):
        defcon.load_pipeline(folder)


def test_loading_imports_no_code_the_caller_did_not_name(
    wrapped: Saved, dp_pair: Saved, tmp_path: Path
) -> None:
    folder = copy_of(wrapped, tmp_path)
    data = json.loads((folder / MANIFEST).read_text())
    data["layers"][1]["wrapper"] = "subprocess:Popen"
    (folder / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(DefconError, match="outside its implementation's module"):
        defcon.load_pipeline(folder)
    custom = copy_of(dp_pair, tmp_path / "custom")
    data = json.loads((custom / MANIFEST).read_text())
    data["arch"].update(family="custom", factory="os:system")
    (custom / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(DefconError, match="pass it to load it"):
        defcon.load_pipeline(custom)


class Opaque(ServingWrapper):
    """A serving wrapper that says nothing about how to rebuild it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_a_wrapper_that_cannot_be_saved_is_refused_by_name() -> None:
    served = Opaque(nn.Linear(2, 2))
    with pytest.raises(DefconError, match="my_api serves through Opaque, which cannot be saved"):
        served_layers(served, {"my_api": f"{__name__}:MyDefense"})
    with pytest.raises(DefconError, match="no single post-training defense"):
        served_layers(served, {})


def test_cli_refuses_a_non_empty_folder_before_training(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = run(
        "compose", "model_watermark", "dp_sgd", "--profile", "tiny", "--seeds", "1",
        "--out", str(tmp_path / "runs"), "--save-model", str(target),
    )  # fmt: skip
    assert_one_line_error(result, "--save-model", "is not empty")
    assert not (tmp_path / "runs" / "cache" / "models").exists()  # nothing was trained
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("kind", ["link", "file"])
def test_cli_refuses_links_and_files(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "model"
    if kind == "link":
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.write_text("x")
    result = run(
        "compose", "model_watermark", "dp_sgd", "--profile", "tiny", "--seeds", "1",
        "--out", str(tmp_path / "runs"), "--save-model", str(target),
    )  # fmt: skip
    assert_one_line_error(
        result, "--save-model", "symbolic link" if kind == "link" else "not a folder"
    )
    assert not any((tmp_path / "elsewhere").iterdir()) if kind == "link" else True


def test_cli_saves_and_says_where(fair: Saved, tmp_path: Path) -> None:
    target = tmp_path / "model"
    result = run(
        "compose", "model_watermark", "threshold_optimizer", "--dataset", "compas",
        "--profile", "tiny", "--seeds", "1", "--out", str(tmp_path / "runs"),
        "--cache", str(fair.composer.cache.root), "--save-model", str(target),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert f"saved model: {target}" in " ".join(result.stderr.split())
    assert read_manifest(target).files == read_manifest(fair.folder).files  # same model, same bytes


def test_a_poisoned_scenario_ships_the_recipe_without_the_simulated_backdoor(
    tmp_path: Path,
) -> None:
    saved = Saved(tmp_path, "digits", ["backdoor_pruning", "output_watermark"])
    manifest = read_manifest(saved.folder)
    assert not manifest.measured and "simulated poisoning" in manifest.notes[0]
    assert manifest.clean_accuracy == pytest.approx(saved.record.clean_accuracy_combined.mean)
    served = saved.served.eval()  # the measured (poisoned) model
    assert accuracy(served, saved.test.x, saved.test.y) == manifest.clean_accuracy
    clean = saved.composer.run_pipeline(
        saved.composer.pipeline(manifest.order, 0, poisoned=False)
    ).model
    loaded = defcon.load_pipeline(saved.folder)
    with torch.no_grad():
        assert torch.equal(loaded(saved.test.x), clean.eval()(saved.test.x))
        assert not torch.equal(loaded(saved.test.x), saved.served.eval()(saved.test.x))


def test_a_post_training_step_that_rebuilds_another_model_is_refused(
    wrapped: Saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from defcon.measure.artefact import save_pipeline
    from pipeline_stages.post_training import output_watermark

    monkeypatch.setattr(output_watermark, "watermark_key", lambda seed: b"another key")
    with pytest.raises(DefconError, match="another model than the one measured"):
        save_pipeline(wrapped.composer, wrapped.record, tmp_path / "model")
    assert not any((tmp_path / "model").iterdir())  # nothing was written


def test_a_users_model_factory_is_imported_only_when_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "saved_user_model.py").write_text(
        "from torch import nn\n\n\n"
        "def build(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    composer = Composer("digits", profile="tiny", cache_dir=tmp_path / "cache",
                        model="saved_user_model:build")  # fmt: skip
    folder = tmp_path / "model"
    composer.compose(["output_watermark", "explanations"], seeds=1, save_model=folder)
    assert read_manifest(folder).model == "saved_user_model:build"
    with pytest.raises(DefconError, match="pass it to load it"):
        defcon.load_pipeline(folder)
    loaded = defcon.load_pipeline(folder, model="saved_user_model:build")
    served = composer.run_pipeline(
        composer.pipeline(("explanations", "output_watermark"), 0, False)
    )
    x = composer.dataset(0).test.x
    with torch.no_grad():
        assert torch.equal(loaded(x), served.model.eval()(x))
    sys.modules.pop("saved_user_model", None)


def test_randomized_smoothing_ships_its_base_classifier_and_says_so(tmp_path: Path) -> None:
    saved = Saved(tmp_path, "digits", ["randomized_smoothing", "output_watermark"])
    same_outputs(saved)
    manifest = read_manifest(saved.folder)
    assert manifest.configs["randomized_smoothing"]["sigma"] == 0.25
    assert any("smoothed with sigma=0.25" in note for note in manifest.notes)
