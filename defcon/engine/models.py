"""Models chosen by dataset: a small CNN for images, an MLP for tabular data.

Every built-in model exposes `features` (an nn.Sequential ending in the penultimate
representation) and `head` (the final nn.Linear), so defenses that inspect hidden layers work on
them. A user's own architecture comes from a factory `module:function` called with the input
shape and the class count (family "custom"); defenses that need architecture facts say so before
training (`Defense.model_problem`). `ArchConfig` rebuilds the exact architecture of a cached state
dict.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from defcon.engine.data import Dataset
from defcon.errors import DefconError
from defcon.user_code import boundary, call
from defcon.vocabulary import DataKind

Norm = Literal["batch", "group"]


class ArchConfig(BaseModel):
    """Everything needed to rebuild a model before loading its weights."""

    model_config = ConfigDict(frozen=True)

    family: Literal["cnn", "mlp", "custom"]
    input_shape: tuple[int, ...]
    num_classes: int
    width: int = 16
    norm: Norm = "batch"
    factory: str | None = None  # custom: 'module:function' building the user's nn.Module
    factory_code: str | None = None  # custom: hash of the factory's source file (cache keys)


def _norm_layer(norm: Norm, channels: int, dims: int) -> nn.Module:
    if norm == "group":
        if dims == 1:
            # One group over all features (a LayerNorm with per-feature affine). Opacus'
            # ModuleValidator.fix would use min(32, C) groups here, which on a flat 64-feature
            # layer normalises pairs of features to ±1 and leaves the MLP a constant predictor.
            return nn.GroupNorm(1, channels)
        # What Opacus' ModuleValidator.fix puts in place of BatchNorm2d.
        return nn.GroupNorm(min(32, channels), channels)
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)


class SmallCNN(nn.Module):
    """Two conv blocks (conv → norm → ReLU → pool) and a linear head."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        channels, height, width = config.input_shape
        w = config.width
        self.features = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1),
            _norm_layer(config.norm, w, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            _norm_layer(config.norm, 2 * w, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * (height // 4) * (width // 4), 4 * w),
            nn.ReLU(),
        )
        self.head = nn.Linear(4 * w, config.num_classes)
        # Channels-last runs the BatchNorm network's conv/norm/pool about a third faster on CPU
        # (same numbers up to float rounding); GroupNorm and Opacus' per-sample hooks are
        # slower in it, so DP models stay in the default layout.
        self.channels_last = config.norm == "batch"
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.features(x))


class MLP(nn.Module):
    """Two hidden layers with normalisation, and a linear head."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        (n_features,) = config.input_shape
        hidden = 4 * config.width
        self.features = nn.Sequential(
            nn.Linear(n_features, hidden),
            _norm_layer(config.norm, hidden, 1),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden // 2, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def arch_for(
    dataset: Dataset, *, width: int = 16, norm: Norm = "batch", factory: str | None = None
) -> ArchConfig:
    """The architecture for a dataset: the user's factory when given, else defcon's CNN for
    images and MLP for tabular data."""
    if factory is not None:
        return ArchConfig(
            family="custom", input_shape=dataset.input_shape, num_classes=dataset.num_classes,
            factory=factory, factory_code=factory_code(factory),
        )  # fmt: skip
    family = "cnn" if dataset.kind is DataKind.IMAGE else "mlp"
    return ArchConfig(
        family=family,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        width=width,
        norm=norm,
    )


def factory_name(factory: str | ModelFactory) -> str:
    """The importable 'module:function' of a factory (the cache rebuilds models by this name)."""
    if isinstance(factory, str):
        load_factory(factory)  # fail now, not in the middle of a run
        return factory
    name = f"{getattr(factory, '__module__', '')}:{getattr(factory, '__qualname__', '')}"
    if "<" in name or name.startswith(":") or name.endswith(":"):
        raise DefconError(
            f"model factory {factory!r} has no importable name ({name}); define it as a "
            "module-level function, or pass 'module:function'"
        )
    if load_factory(name) is not factory:
        raise DefconError(f"model factory '{name}' does not resolve to the function given")
    return name


def load_factory(path: str) -> ModelFactory:
    from defcon.plugins import load_object

    factory = load_object(path, "--model")
    if not callable(factory):
        raise DefconError(f"--model '{path}' is a {type(factory).__name__}, not a callable")
    return factory


def factory_code(path: str) -> str:
    """Hash of the source behind the factory: for a user's module, its whole package (every
    module it uses from its own folder, `fingerprint.plugin_code`), so a changed architecture or
    helper is a new model; otherwise the defining file."""
    import hashlib
    from pathlib import Path

    from defcon.engine.fingerprint import plugin_code, user_folder

    factory = load_factory(path)
    module = getattr(factory, "__module__", None) or ""
    if module in sys.modules and user_folder(module.partition(".")[0]) is not None:
        return plugin_code(module)
    try:
        data = Path(inspect.getfile(factory)).read_bytes()
    except (TypeError, OSError):
        data = repr(factory).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _custom_model(config: ArchConfig) -> nn.Module:
    assert config.factory is not None
    factory = load_factory(config.factory)
    model = call(
        f"--model '{config.factory}'",
        f"the call for input shape {tuple(config.input_shape)} and {config.num_classes} classes",
        factory, tuple(config.input_shape), config.num_classes,
    )  # fmt: skip
    if not isinstance(model, nn.Module):
        raise DefconError(
            f"--model '{config.factory}' returned {type(model).__name__}, expected a torch nn.Module"
        )
    if config.norm == "group":  # what DP-SGD asked for
        model = without_batchnorm(model)
    return model


def without_batchnorm(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm replaced by a GroupNorm (in place; returned).

    As the built-in models do: on flat features one group over all of them, because Opacus'
    ModuleValidator.fix would use min(32, C) groups, normalising single features to a constant
    (an MLP becomes a constant predictor); on images what ModuleValidator.fix puts there.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            flat = isinstance(child, nn.BatchNorm1d)
            channels = child.num_features
            groups = 1 if flat else min(32, channels)
            while channels % groups:
                groups -= 1
            setattr(model, name, nn.GroupNorm(groups, channels, affine=child.affine))
        else:
            without_batchnorm(child)
    return model


def build_model(config: ArchConfig, seed: int) -> nn.Module:
    """A freshly initialised model; the initialisation is fixed by `seed`."""
    torch.manual_seed(seed)
    if config.family == "custom":
        return _custom_model(config)
    return SmallCNN(config) if config.family == "cnn" else MLP(config)


def check_model(config: ArchConfig) -> None:
    """Build the model once and run a batch of two zero inputs: a factory that does not fit the
    data fails here with one line, before any training."""
    model = build_model(config, seed=0)
    model.eval()
    with (
        boundary(
            f"the model ({config.factory or config.family})",
            f"its forward pass on inputs of shape {tuple(config.input_shape)}",
        ),
        torch.no_grad(),
    ):
        out = model(torch.zeros(2, *config.input_shape))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, config.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DefconError(
            f"the model ({config.factory or config.family}) must return logits of shape "
            f"(batch, {config.num_classes}); it returned {shape}"
        )


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Class predictions in eval mode, in batches (the model is left in eval mode)."""
    model.eval()
    return torch.cat([model(chunk).argmax(1) for chunk in x.split(batch_size)])


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk).softmax(1) for chunk in x.split(batch_size)])


def model_label(config: ArchConfig) -> str:
    """How a model is named in messages: the user's factory, or defcon's family."""
    return f"--model '{config.factory}'" if config.factory else f"defcon's {config.family.upper()}"


def nonfinite_logits(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model answers NaN or ±inf logits on some of the inputs `x` (eval mode): its
    argmax would be a meaningless class 0, so no measurement on it may pass as a result."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        model.eval()
        return any(
            not bool(torch.isfinite(model(chunk.to(device))).all()) for chunk in x.split(1024)
        )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    return float((predict(model, x) == y).float().mean())


class InputLayer(nn.Module):
    """A fixed affine map x ↦ x·Wᵀ + b of flat inputs, placed in front of a model.

    What a pre-training defense that transforms every input (not only the training rows)
    contributes: the model trains behind it and is served with it, so training data, the
    validation rows in-training defenses read and every served query go through the same
    transform. Weight and bias are buffers, not parameters: nothing trains them.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(f"an input layer needs an (out, in) weight and (out,) bias, got "
                             f"{tuple(weight.shape)} and {tuple(bias.shape)}")  # fmt: skip
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        self.register_buffer("weight", weight.detach().clone().float())
        self.register_buffer("bias", bias.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def then(self, other: InputLayer) -> InputLayer:
        """One layer computing `other(self(x))` (composed in float64)."""
        weight = other.weight.double() @ self.weight.double()
        bias = other.weight.double() @ self.bias.double() + other.bias.double()
        return InputLayer(weight, bias)


class WithInputLayer(nn.Module):
    """`model(layer(x))` while the model trains behind an input layer.

    `head` is the model's own: it reads the penultimate representation, which the layer does not
    change, so a finetune-phase defense that re-initialises the head works unchanged.
    """

    def __init__(self, layer: InputLayer, model: nn.Module) -> None:
        super().__init__()
        self.layer = InputLayer(layer.weight, layer.bias)  # a copy: placing it moves buffers
        self.model = model

    @property
    def head(self) -> nn.Module:
        return self.model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.layer(x))


def first_linear(model: nn.Module) -> nn.Linear | None:
    """The Linear that reads the raw input (`features[0]` of defcon's MLP), or None."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features) and isinstance(features[0], nn.Linear):
        return features[0]
    return None


def input_layer_problem(model: nn.Module, features: int) -> str | None:
    """Why an input layer on `features` inputs cannot be folded into `model` (None: it can)."""
    first = first_linear(model)
    if first is None or first.bias is None or first.in_features != features:
        return (
            f"an input layer is folded into the model's first layer, which must be a Linear with "
            f"a bias on its {features} input features as `features[0]` (defcon's MLP); "
            f"{type(model).__name__} has none"
        )
    return None


@torch.no_grad()
def fold_input_layer(fronted: WithInputLayer, probe: torch.Tensor) -> nn.Module:
    """The model behind `fronted` with the input layer folded into its first Linear.

    W·(Ax + c) + b = (WA)x + (Wc + b): the same function as a plain model of the same
    architecture, so it is cached, copied, pruned and attacked like any other model. Checked on
    `probe` inputs: a model whose forward pass does not start with `features[0]` is refused.
    """
    model, layer = fronted.model, fronted.layer
    problem = input_layer_problem(model, layer.weight.shape[0])
    if problem:
        raise DefconError(problem)
    first = first_linear(model)
    assert first is not None and first.bias is not None
    fronted.eval()
    expected = fronted(probe).cpu()
    weight = first.weight.double()
    shift = weight @ layer.bias.double()
    first.weight.copy_(weight @ layer.weight.double())
    first.bias.copy_(first.bias.double() + shift)
    folded = model(probe.to(first.weight.device)).cpu()  # the boundary is on `fronted`
    if not torch.allclose(folded, expected, rtol=1e-4, atol=1e-4):
        raise DefconError(
            f"folding the input layer into {type(model).__name__}.features[0] changed its outputs "
            f"(largest difference {float((folded - expected).abs().max()):.2e}): its forward pass "
            "does not start with features[0]"
        )
    return model
