"""Where models compute: `auto`, `cpu` or `cuda[:N]`.

Data, secrets and every defense's bookkeeping stay on the CPU; a model placed on an accelerator
gets a boundary on its top-level module that moves tensor inputs to the device and its outputs
back. Defenses therefore run unchanged on any device (none of them needs to know where the model
lives), while forward and backward passes, Opacus' per-sample gradients and attack gradients run
on the device. Code that needs the device's own tensors (an attack library that moves its inputs
to the model's device) runs inside `device_outputs`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from defcon.errors import DefconError

DEVICE_HELP = "auto (a GPU when one is visible, else the CPU), cpu, cuda or cuda:N"
_BOUNDARY = "_defcon_device"
_NATIVE = "_defcon_native_outputs"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """A concrete torch device for a user's choice; a clear error when it is not available."""
    if isinstance(device, torch.device):
        device = str(device)
    text = (device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise DefconError(f"--device '{device}' is not understood; accepted: {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise DefconError(
            f"--device {text}: no CUDA device is visible to torch (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto"
        )
    index = int(match.group(1) or torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise DefconError(
            f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return torch.device("cuda", index)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    return value


def _inputs_to_device(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return _to(args, getattr(module, _BOUNDARY))


def _outputs_to_cpu(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    if getattr(module, _NATIVE, False):
        return output
    return _to(output, torch.device("cpu"))


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device` (in place, returned); off the CPU, add the CPU boundary once."""
    model.to(device)
    if device.type == "cpu" or hasattr(model, _BOUNDARY):
        if hasattr(model, _BOUNDARY):
            setattr(model, _BOUNDARY, device)
        return model
    setattr(model, _BOUNDARY, device)
    model.register_forward_pre_hook(_inputs_to_device)
    model.register_forward_hook(_outputs_to_cpu)
    return model


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextlib.contextmanager
def device_outputs(model: nn.Module) -> Iterator[None]:
    """Within this block, placed models inside `model` return outputs on their device.

    For libraries that move inputs to the model's device themselves and compare the outputs with
    tensors there (torchattacks computes its loss against labels it moved to the device).
    """
    boundaries = [m for m in model.modules() if hasattr(m, _BOUNDARY)]
    for module in boundaries:
        setattr(module, _NATIVE, True)
    try:
        yield
    finally:
        for module in boundaries:
            setattr(module, _NATIVE, False)


def run_attack(attack: Any, model: nn.Module, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """`attack(x, *args)` for a torchattacks attack on `model`, returned on `x`'s device."""
    with device_outputs(model):
        return attack(x, *args).to(x.device)
