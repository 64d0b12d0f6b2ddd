"""A user's `torch.utils.data.Dataset` objects as a defcon dataset (the Python API).

defcon's defenses index, subset, poison and stamp whole splits, so a map-style dataset is read
once into arrays (items `(x, y)` or `(x, y, s)` with `s` the sensitive attribute) and handed to
`defcon.engine.data.from_arrays`, which infers the kind, scales inputs to [0, 1] and hashes the content
for cache keys exactly as for arrays and files.
"""

from __future__ import annotations

from collections.abc import Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from defcon.engine.data import UserData, from_arrays
from defcon.errors import DefconError
from defcon.user_code import boundary
from defcon.vocabulary import DataKind

ACCEPTED = (
    "a map-style torch Dataset whose items are (x, y) or (x, y, s) with tensor or number parts"
)


def _read(dataset: Dataset, what: str) -> list[np.ndarray]:
    """All items of `dataset` as stacked arrays: [x, y] or [x, y, s]."""
    if not isinstance(dataset, Dataset) or not isinstance(dataset, Sized):
        raise DefconError(f"{what}: expected {ACCEPTED}; got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise DefconError(f"{what}: the dataset is empty")
    parts: list[list[np.ndarray]] | None = None
    loader = DataLoader(dataset, batch_size=1024, shuffle=False)  # default collate stacks items
    with boundary(what, "reading its items"):  # a __getitem__ that raises anything else
        try:
            for batch in loader:
                items = list(batch) if isinstance(batch, (list, tuple)) else [batch]
                if len(items) not in (2, 3):
                    raise DefconError(f"{what}: items have {len(items)} parts; expected {ACCEPTED}")
                arrays = [torch.as_tensor(item).detach().cpu().numpy() for item in items]
                parts = [[] for _ in arrays] if parts is None else parts
                if len(arrays) != len(parts):
                    raise DefconError(f"{what}: items do not all have the same number of parts")
                for store, array in zip(parts, arrays, strict=True):
                    store.append(array)
        except (TypeError, RuntimeError, ValueError) as error:  # collate: ragged or odd items
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DefconError(
                f"{what}: could not read its items ({first}); expected {ACCEPTED}"
            ) from None
    assert parts is not None
    return [np.concatenate(store) for store in parts]


def from_torch_datasets(
    train: Dataset,
    test: Dataset,
    *,
    val: Dataset | None = None,
    kind: DataKind | str | None = None,
    name: str = "torch-dataset",
    sensitive_attribute: str | None = None,
) -> UserData:
    """A defcon dataset from torch Datasets (validation carved from train when `val` is None).

    >>> data = from_torch_datasets(TensorDataset(x, y), TensorDataset(x_test, y_test))
    >>> Composer(data).compose(["dp_sgd", "explanations"], seeds=2)  # doctest: +SKIP
    """
    splits = {"train": _read(train, "train dataset"), "test": _read(test, "test dataset")}
    if val is not None:
        splits["val"] = _read(val, "val dataset")
    widths = {len(parts) for parts in splits.values()}
    if len(widths) != 1:
        raise DefconError(
            "the datasets disagree on the sensitive attribute: give (x, y, s) items in every "
            "split or (x, y) items in every split"
        )
    has_s = widths == {3}
    part = {key: dict(zip(("x", "y", "s"), parts, strict=False)) for key, parts in splits.items()}
    return from_arrays(
        part["train"]["x"], part["train"]["y"], part["test"]["x"], part["test"]["y"],
        x_val=part["val"]["x"] if val is not None else None,
        y_val=part["val"]["y"] if val is not None else None,
        s_train=part["train"]["s"] if has_s else None,
        s_test=part["test"]["s"] if has_s else None,
        s_val=part["val"]["s"] if has_s and val is not None else None,
        kind=kind, name=name, sensitive_attribute=sensitive_attribute,
    )  # fmt: skip


__all__ = ["from_torch_datasets"]
