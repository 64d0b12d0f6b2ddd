"""The defended model as an artefact: what `compose --save-model DIR` writes, `load_pipeline` reads.

A composition is measured to be shipped: the folder holds the combined arm's model of the first
seed as it was served when measured — the trained weights (`weights.pt`, a plain state dict of
the architecture in the manifest; a pre-training input layer is already folded into its first
Linear), the tensors of the post-training serving wrappers in front of them (`serving.pt`, when
any has tensors) and `manifest.json`: defenses, order, every defense's settings, the
architecture, data, versions, the measured verdicts, each wrapper's own settings and a SHA-256
of every file.

Nothing is saved that would serve differently from what was measured: every serving wrapper must
say how it is rebuilt (`ServingWrapper.saved_settings` / `restore`), and before anything is
written the pipeline is rebuilt from the bytes about to be written and must give identical
outputs. Loading uses `torch.load(weights_only=True)`, verifies every checksum, imports no code
the caller did not name (a wrapper class only from the module of its defense's catalog
implementation, a user's model factory only when passed as `model=`), and every failure is one
`DefconError`.

The folder holds the keys of keyed answers (an output watermark, the threshold optimizer's
draws): it is the owner's deployment, to be kept private like the weights.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from defcon.catalog import Catalog, builtin_catalog
from defcon.engine.data import Split
from defcon.engine.defense import ServingWrapper
from defcon.engine.devices import device_of, place
from defcon.engine.models import ArchConfig, accuracy, build_model, factory_code
from defcon.errors import DefconError
from defcon.measure.pipelines import CLEAN_ACCURACY
from defcon.planning.records import CompositionRecord, versions
from defcon.planning.rules import Scenario
from defcon.storage import atomic_write_bytes, read_regular_bytes, writable_folder

if TYPE_CHECKING:
    from defcon.measure.composer import Composer

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
SERVING = "serving.pt"
CHECK_INPUTS = 256  # test inputs the rebuilt pipeline must answer identically before saving


class SavedLayer(BaseModel):
    """One serving wrapper, innermost first: the defense that put it there, its class, settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    defense: str
    wrapper: str  # 'module:Class', in the module of the defense's implementation
    settings: dict[str, Any]


class Manifest(BaseModel):
    """What a saved pipeline is, how it was made and measured, and the checksums of its files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int
    defenses: tuple[str, ...]
    order: tuple[str, ...]
    configs: dict[str, dict[str, Any]]  # every defense's settings, defaults included
    arch: ArchConfig
    model: str | None  # the user's model factory 'module:function' (None: defcon's)
    dataset: str
    dataset_sha256: str | None  # a user's dataset file (None: a built-in one)
    train_sha256: str  # the training rows this model was trained on (seed's split)
    seed: int
    profile: str
    measured: bool  # False: the measured model was trained under a simulated poisoning
    layers: tuple[SavedLayer, ...]
    files: dict[str, str]  # file name → SHA-256
    label: str
    outcomes: dict[str, str]
    clean_accuracy: float  # the measured combined model's reading on this seed's test split
    unreliable: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    record: dict[str, Any]  # the composition record the verdicts come from
    versions: dict[str, str]


# ---------------------------------------------------------------------------- the target folder


def check_target(folder: Path | str, option: str = "--save-model") -> Path:
    """The user's folder for a saved pipeline, checked before any training: not a link, a folder
    (made when missing), empty and writable."""
    path = Path(folder)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise DefconError(f"{option} '{path}': {error.strerror or error}") from None
    if mode is not None and stat.S_ISLNK(mode):
        raise DefconError(
            f"{option} '{path}' is a symbolic link; name a real folder (never followed)"
        )
    if mode is not None and not stat.S_ISDIR(mode):
        raise DefconError(
            f"{option} '{path}' exists and is not a folder; name a new or empty folder"
        )
    if mode is not None and any(path.iterdir()):
        raise DefconError(
            f"{option} '{path}' is not empty; name a new or empty folder (a saved pipeline is "
            "never written over other files)"
        )
    writable_folder(path, option)
    return path


# ---------------------------------------------------------------------------- saving


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
    return buffer.getvalue()


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _module_of(implementation: str) -> str:
    return implementation.partition(":")[0]


def served_layers(
    served: nn.Module, post: Mapping[str, str]
) -> tuple[nn.Module, list[tuple[str, ServingWrapper]]]:
    """The weights behind the serving wrappers and the wrappers, innermost first, each with the
    post-training defense (`post`: name → implementation) whose module defines it."""
    chain: list[ServingWrapper] = []
    model = served
    while isinstance(model, ServingWrapper):
        chain.append(model)
        model = model.model
    layers = []
    for wrapper in reversed(chain):
        owners = [n for n, impl in post.items() if _module_of(impl) == type(wrapper).__module__]
        if len(owners) != 1:
            raise DefconError(
                f"--save-model: the served pipeline has a {type(wrapper).__name__} no single "
                f"post-training defense of this combination defines; it cannot be saved"
            )
        if wrapper.saved_settings() is None:
            raise DefconError(
                f"--save-model: {owners[0]} serves through {type(wrapper).__name__}, which cannot "
                "be saved so that it serves what was measured; compose without --save-model"
            )
        layers.append((owners[0], wrapper))
    return model, layers


def pipeline_files(
    served: nn.Module, arch: ArchConfig, post: Mapping[str, str]
) -> tuple[dict[str, bytes], tuple[SavedLayer, ...]]:
    """The bytes of the weights and serving files, and the wrappers' descriptions."""
    weights, wrappers = served_layers(served, post)
    reference = build_model(arch, seed=0)
    state = weights.state_dict()
    try:
        reference.load_state_dict(state)
    except RuntimeError:
        post_names = ", ".join(post) or "none"
        raise DefconError(
            f"--save-model: the served weights are not a plain {arch.family} model of the trained "
            f"architecture (post-training defenses: {post_names}); they cannot be saved"
        ) from None
    files = {WEIGHTS: _tensor_bytes(state)}
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    for index, (defense, wrapper) in enumerate(wrappers):
        own = {k: v for k, v in wrapper.state_dict().items() if not k.startswith("model.")}
        tensors.update({f"{index}.{k}": v for k, v in own.items()})
        settings = wrapper.saved_settings() or {}
        layers.append(SavedLayer(defense=defense, wrapper=_class_path(wrapper), settings=settings))
    if tensors:
        files[SERVING] = _tensor_bytes(tensors)
    return files, tuple(layers)


def save_pipeline(composer: Composer, record: CompositionRecord, folder: Path | str) -> Path:
    """Write the combined arm of `record`'s first seed, as served when measured, to `folder`
    (checked by `check_target`; the composer must be in the state it measured in)."""
    folder = check_target(folder)
    seed = record.seeds[0]
    poisoned = Scenario.of(composer.catalog[name] for name in record.order).poisoned
    notes = []
    if poisoned:
        notes.append(
            f"the combination was measured under a simulated poisoning ({', '.join(record.scenario)}); "
            "this model is the same recipe trained on the data without it (defcon never ships a "
            "model carrying its own simulated backdoor), so its outputs are not the measured model's"
        )
    pipeline = composer.pipeline(record.order, seed, poisoned=False)
    result = composer.run_pipeline(pipeline)
    served = result.model
    arch = result.env.arch
    assert arch is not None  # set when the model is built
    post = {d.name: d.spec.implementation for d in pipeline.post}
    files, layers = pipeline_files(served, arch, post)
    if any(d.name == "randomized_smoothing" for d in pipeline.defenses):
        sigma = composer.defense("randomized_smoothing").config.model_dump().get("sigma")
        notes.append(
            f"randomized_smoothing: this module is the base classifier (what clean accuracy "
            f"read); its certified accuracy is of the classifier smoothed with sigma={sigma} "
            "(Gaussian input noise, Cohen et al.'s CERTIFY)"
        )
    dataset = composer.dataset(seed)
    train_digest = hashlib.sha256(
        dataset.train.x.numpy().tobytes() + dataset.train.y.numpy().tobytes()
    )
    # the measured model's clean accuracy on this seed, from the cache (keyed like that model)
    measured = composer.run_pipeline(composer.pipeline(record.order, seed, poisoned=poisoned))
    clean = composer.measure(measured, None)[CLEAN_ACCURACY]
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, defenses=record.defenses, order=record.order,
        configs={d.name: d.config.model_dump(mode="json") for d in pipeline.defenses},
        arch=arch, model=composer.model_factory, dataset=record.dataset,
        dataset_sha256=record.dataset_sha256, train_sha256=train_digest.hexdigest(), seed=seed,
        profile=record.profile, measured=not poisoned, layers=layers,
        files={name: _sha256(data) for name, data in files.items()}, label=str(record.label),
        outcomes={r.defense: str(r.outcome) for r in record.results},
        clean_accuracy=clean,
        unreliable=record.unreliable, notes=tuple(notes),
        record=record.model_dump(mode="json"), versions=versions(),
    )  # fmt: skip
    rebuilt = _rebuild(manifest, files, composer.catalog, composer.model_factory)
    reading = None if poisoned else (dataset.test, clean)
    _check_same(served, rebuilt, dataset.test.x[:CHECK_INPUTS], reading)
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    atomic_write_bytes(folder / MANIFEST, (manifest.model_dump_json(indent=2) + "\n").encode())
    return folder


@torch.no_grad()
def _check_same(
    served: nn.Module, rebuilt: nn.Module, x: torch.Tensor, reading: tuple[Split, float] | None
) -> None:
    """Refuse to save a pipeline whose rebuilt copy answers differently on test inputs, or (with
    `reading`: the test split and the measured model's cached clean accuracy on it) whose
    accuracy differs from the measured model's, i.e. a post-training step gave another model."""
    place(rebuilt, device_of(served))  # both answer CPU inputs with CPU outputs
    served.eval()
    rebuilt.eval()
    expected, got = served(x), rebuilt(x)
    if not torch.equal(expected, got):
        gap = float((expected - got).abs().max())
        raise DefconError(
            f"--save-model: the pipeline rebuilt from the files to be saved answers differently "
            f"from the served one (largest logit difference {gap:.2e}); nothing was saved"
        )
    if reading is not None:
        test, measured = reading
        if accuracy(rebuilt, test.x, test.y) != measured:
            raise DefconError(
                "--save-model: applying the post-training defenses again gave another model than "
                "the one measured (its clean accuracy differs); nothing was saved"
            )


# ---------------------------------------------------------------------------- loading


def read_manifest(folder: Path | str) -> Manifest:
    """The manifest of a saved pipeline (one `DefconError` when absent, invalid or too new)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(read_regular_bytes(path))
    except FileNotFoundError:
        raise DefconError(
            f"'{folder}' holds no saved defcon pipeline (no {MANIFEST}); give the folder "
            "`compose --save-model` wrote"
        ) from None
    except (OSError, ValueError) as error:
        raise DefconError(f"cannot read '{path}': {error}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise DefconError(
            f"'{path}' has schema_version {version!r}; this defcon reads saved pipelines of "
            f"schema_version {SCHEMA_VERSION}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DefconError(f"'{path}' is not a valid manifest ({where}: {first['msg']})") from None


def _load_tensors(data: bytes, name: str) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure: one line
        raise DefconError(f"{name} is not a tensor file ({type(error).__name__})") from None
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise DefconError(f"{name} does not hold a dict of tensors")
    return loaded


def _wrapper_class(layer: SavedLayer, catalog: Catalog) -> type[ServingWrapper]:
    """The wrapper class, imported only from the module of its defense's implementation."""
    if layer.defense not in catalog:
        raise DefconError(
            f"the saved pipeline's {layer.defense} is not in the catalog; pass the catalog it was "
            "composed with (load_pipeline(..., catalog=...))"
        )
    module_name, _, qualname = layer.wrapper.partition(":")
    if module_name != _module_of(catalog[layer.defense].implementation):
        raise DefconError(
            f"the saved pipeline names wrapper '{layer.wrapper}' for {layer.defense}, outside its "
            "implementation's module; refused"
        )
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, ServingWrapper)):
        raise DefconError(
            f"the saved pipeline's wrapper '{layer.wrapper}' is not a serving wrapper"
        )
    return cls


def _rebuild(
    manifest: Manifest, files: Mapping[str, bytes], catalog: Catalog, model: str | None
) -> nn.Module:
    """The served pipeline from the manifest and the files' bytes (checksums verified)."""
    for name, digest in manifest.files.items():
        if name not in files:
            raise DefconError(f"the saved pipeline lacks {name}, listed in its manifest")
        if _sha256(files[name]) != digest:
            raise DefconError(
                f"{name} does not match the SHA-256 in its manifest: the file was modified or is "
                "corrupt; refusing to load it"
            )
    arch = manifest.arch
    if arch.family == "custom":
        if model != arch.factory:
            raise DefconError(
                f"this pipeline's model is your factory '{arch.factory}'; pass it to load it "
                f"(load_pipeline(folder, model='{arch.factory}')): defcon imports no code the "
                "caller did not name"
            )
        if factory_code(arch.factory) != arch.factory_code:  # type: ignore[arg-type]
            raise DefconError(
                f"the code of '{arch.factory}' changed since the pipeline was saved; it would not "
                "serve what was measured"
            )
    network = build_model(arch, seed=0)
    try:
        network.load_state_dict(_load_tensors(files[WEIGHTS], WEIGHTS))
    except (RuntimeError, KeyError) as error:
        raise DefconError(f"{WEIGHTS} does not fit the manifest's architecture ({error})") from None
    served: nn.Module = network
    tensors = _load_tensors(files[SERVING], SERVING) if SERVING in manifest.files else {}
    for index, layer in enumerate(manifest.layers):
        cls = _wrapper_class(layer, catalog)
        prefix = f"{index}."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            wrapper = cls.restore(served, layer.settings, own)
            wrapper.load_state_dict(
                {**own, **{f"model.{k}": v for k, v in served.state_dict().items()}}
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise DefconError(
                f"cannot rebuild {layer.defense}'s {cls.__name__} from the saved pipeline "
                f"({type(error).__name__}: {error})"
            ) from None
        served = wrapper
    return served.eval()


def load_pipeline(
    folder: Path | str,
    *,
    catalog: Catalog | None = None,
    model: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The pipeline `compose --save-model` saved, as served when measured (eval mode).

    `catalog`: the one it was composed with when it used your own defenses; `model`: your model
    factory 'module:function' when it was trained with one (checked against the manifest).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = {}
    for name in manifest.files:
        if Path(name).name != name or name == MANIFEST:
            raise DefconError(f"the manifest lists '{name}', not a file of the pipeline's folder")
        try:
            files[name] = read_regular_bytes(folder / name)
        except OSError as error:
            raise DefconError(f"cannot read '{folder / name}': {error.strerror or error}") from None
    return _rebuild(manifest, files, catalog or builtin_catalog(), model).to(device)
