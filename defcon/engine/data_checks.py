"""Checks of a user's data before anything is encoded or trained: one place for every refusal.

`defcon.engine.data` reads a CSV table or arrays, then calls these checks before it scales, encodes or
splits anything. Each problem is one `DefconError` naming the column or array and what is
accepted: a value a model cannot learn from (NaN, ±inf, complex, text among numbers), a table
whose encoding would be wrong or huge (duplicate headers, a numeric column with stray strings,
a categorical column with too many values), a label that is not a class label (continuous, a
class missing from the training rows), and a sensitive attribute that does not split the rows
into groups. What defcon does change is said, never silent: rows with missing cells are dropped
and counted in `UserData.notices` (`defcon.planning.notices`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from defcon.errors import DefconError

MAX_CATEGORIES = 256  # distinct values of one categorical column (one feature per value)
MAX_FEATURE_BYTES = 2 * 1024**3  # the dense float32 feature matrix of a table, at most
MAX_CLASSES = 1000  # distinct labels
MAX_GROUPS = 20  # distinct values of a sensitive attribute
MIN_CLASS_ROWS = 5  # per class in a CSV table, whose splits are drawn per seed
NUMERIC_SHARE = 0.9  # a text column whose values are at least this share numbers is "mixed"
X_KINDS = "biuf"  # numpy dtype kinds accepted for inputs: bool, integers, floats
LABEL_KINDS = "biufUS"  # labels and groups may also be text


def _examples(values: Sequence[Any], n: int = 3) -> str:
    return ", ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in list(values)[:n])


# --------------------------------------------------------------------------- CSV tables


def check_header(header: Sequence[str], path: object) -> None:
    """Every column name once: pandas would rename a second 'y' to 'y.1' and keep it as a
    feature (a copy of the label among the inputs)."""
    seen: dict[str, int] = {}
    for name in header:
        seen[name] = seen.get(name, 0) + 1
    twice = [name for name, count in seen.items() if count > 1]
    if twice:
        raise DefconError(
            f"dataset file '{path}' has duplicate column names {_examples(twice)}; every column "
            "needs its own name (a second copy of a column would become a feature)"
        )


def drop_missing(frame: Any, path: object) -> tuple[Any, tuple[str, ...]]:
    """The rows without a missing cell, and a note counting the rows dropped (defcon does not
    impute; a model cannot read a missing value)."""
    missing = frame.isna()
    incomplete = missing.any(axis=1)
    dropped = int(incomplete.sum())
    if not dropped:
        return frame, ()
    columns = [str(c) for c in frame.columns[missing.any(axis=0).to_numpy()]]
    note = (
        f"{path}: dropped {dropped} of {len(frame)} rows with missing values (in columns "
        f"{', '.join(columns[:5])}{', ...' if len(columns) > 5 else ''}); defcon does not impute"
    )
    return frame[~incomplete], (note,)


def check_table(frame: Any, path: object, target: str, sensitive: str | None) -> None:
    """A complete table (no missing cells) ready to encode: finite numbers, no stray text in a
    numeric column, categorical columns of bounded cardinality and a dense size that fits, a
    target of class labels and a sensitive column of a few groups."""
    import pandas as pd

    features = [c for c in frame.columns if c != target]
    width = 0
    for column in features:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            width += int(values.nunique())
        elif pd.api.types.is_numeric_dtype(values):
            _check_numeric_column(values, column, path)
            width += 1
        else:
            width += _check_categorical_column(values, column, path)
    needed = len(frame) * width * 4
    if needed > MAX_FEATURE_BYTES:
        raise DefconError(
            f"dataset file '{path}': {len(frame)} rows × {width} features (after one-hot "
            f"encoding) need {needed / 1024**3:.1f} GiB; at most {MAX_FEATURE_BYTES / 1024**3:.0f} "
            "GiB (drop or bin wide categorical columns, or use fewer rows)"
        )
    check_target(frame[target], f"--target '{target}'")
    counts = frame[target].astype(str).value_counts()
    rare = counts[counts < MIN_CLASS_ROWS]
    if len(rare):
        raise DefconError(
            f"--target '{target}' has {len(rare)} class(es) with fewer than {MIN_CLASS_ROWS} rows "
            f"({_examples([f'{k} ({v} rows)' for k, v in rare.items()])}); each class needs at "
            f"least {MIN_CLASS_ROWS} so every split (drawn per seed) can hold it: drop or merge them"
        )
    if sensitive is not None:
        check_groups(frame[sensitive].astype(str).to_numpy(), f"--sensitive '{sensitive}'")


def _check_numeric_column(values: Any, column: object, path: object) -> None:
    data = values.to_numpy(dtype=float)
    bad = ~np.isfinite(data)
    if bad.any():
        raise DefconError(
            f"dataset file '{path}': column '{column}' has {int(bad.sum())} infinite value(s) "
            f"(first at data row {int(np.flatnonzero(bad)[0]) + 1}); accepted: finite numbers "
            "(an empty cell counts as missing and its row is dropped)"
        )
    if not np.isfinite(data.max() - data.min()):
        raise DefconError(
            f"dataset file '{path}': column '{column}' spans more than a float can hold "
            f"({data.min():g} to {data.max():g}); rescale it"
        )


def _check_categorical_column(values: Any, column: object, path: object) -> int:
    """The number of one-hot features the column becomes (refused: stray text in a numeric
    column, more than MAX_CATEGORIES values)."""
    import pandas as pd

    text = values.astype(str)
    numbers = pd.to_numeric(text, errors="coerce")
    is_number = numbers.notna().to_numpy()
    if is_number.any() and is_number.mean() >= NUMERIC_SHARE:
        stray = np.flatnonzero(~is_number)
        raise DefconError(
            f"dataset file '{path}': column '{column}' holds numbers except {len(stray)} "
            f"value(s) such as {_examples(text.iloc[stray].unique())} (first at data row "
            f"{int(stray[0]) + 1}); a column is either all numbers or categories, so fix or "
            "empty those cells (an empty cell counts as missing)"
        )
    distinct = int(text.nunique())
    if distinct > MAX_CATEGORIES:
        raise DefconError(
            f"dataset file '{path}': column '{column}' has {distinct} distinct values; a "
            f"categorical column becomes one feature per value, at most {MAX_CATEGORIES} "
            "(drop an ID or free-text column, or bin it)"
        )
    return distinct


# --------------------------------------------------------------------------- labels and groups


def check_target(values: Any, what: str) -> None:
    """Class labels, not a continuous quantity: numbers must be whole (1.0 is class 1; 0.37 is a
    regression target), and at most MAX_CLASSES distinct values."""
    data = np.asarray(values)
    if data.dtype.kind == "f":
        fractional = data[np.isfinite(data) & (data != np.round(data))]
        if len(fractional):
            raise DefconError(
                f"{what} holds non-integer numbers (e.g. {_examples(np.unique(fractional))}, "
                f"{len(np.unique(data))} distinct values): it looks continuous, and defcon "
                "measures classifiers; give class labels (whole numbers or names), e.g. bin it"
            )
    distinct = len(np.unique(data.astype(str) if data.dtype.kind in "US" else data))
    if distinct > MAX_CLASSES:
        raise DefconError(
            f"{what} has {distinct} distinct values; at most {MAX_CLASSES} classes are accepted "
            "(is it an ID or a continuous quantity?)"
        )


def check_groups(values: np.ndarray, what: str, hint: str = "bin a continuous one") -> None:
    """A sensitive attribute splits the rows into 2..MAX_GROUPS groups: with one group every
    fairness gap is 0 by construction, with hundreds it is noise."""
    groups = np.unique(values)
    if len(groups) < 2:
        only = f" ({_examples(groups)})" if len(groups) else ""
        raise DefconError(
            f"{what} has {len(groups)} value(s){only}; fairness is measured between groups, so "
            "it needs at least two"
        )
    if len(groups) > MAX_GROUPS:
        raise DefconError(
            f"{what} has {len(groups)} distinct values; a sensitive attribute names at most "
            f"{MAX_GROUPS} groups ({hint})"
        )


def check_split_classes(labels: Mapping[str, np.ndarray], what: str) -> None:
    """Every class of the validation and test labels occurs in the training labels: a model
    cannot learn a class it never saw, so its accuracy there would be 0 by construction."""
    seen = set(np.unique(labels["train"]).tolist())
    for key in ("val", "test"):
        if key not in labels:
            continue
        missing = sorted(set(np.unique(labels[key]).tolist()) - seen)
        if missing:
            raise DefconError(
                f"{what}: the {key} labels have class(es) {_examples(missing)} that no training "
                "row has; every class needs training rows (add some, or drop those rows)"
            )


# --------------------------------------------------------------------------- arrays


def check_array(array: np.ndarray, name: str, what: str) -> None:
    """One array of a .npz file or the Python API: at least one row, a real dtype (complex
    values are refused, not truncated), and only finite numbers."""
    role = name.split("_")[0]  # x, y or s
    if array.ndim == 0:
        raise DefconError(
            f"{what}: {name} is a single value (a 0-d array); expected one entry per row"
        )
    kinds = X_KINDS if role == "x" else LABEL_KINDS
    if array.dtype.kind not in kinds:
        accepted = "booleans, integers or floats" if role == "x" else "integers, floats or text"
        raise DefconError(
            f"{what}: {name} has dtype {array.dtype}"
            + (" (complex numbers)" if array.dtype.kind == "c" else "")
            + f"; accepted: {accepted}"
        )
    if role == "x" and array.ndim >= 2 and array[0].size == 0:
        raise DefconError(f"{what}: {name} has shape {array.shape}: no input features")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            nan = int(np.isnan(array).sum())
            first = int(np.flatnonzero(bad.reshape(len(array), -1).any(1))[0])
            raise DefconError(
                f"{what}: {name} has {nan} NaN and {int(bad.sum()) - nan} infinite value(s) "
                f"(first in row {first}); accepted: finite numbers (defcon does not impute: "
                "drop or fill those rows)"
            )
    if role == "y":
        check_target(array, f"{what}: {name}")
