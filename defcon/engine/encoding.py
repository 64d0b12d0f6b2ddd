"""How a user's label and sensitive columns become class ids and group ids, said as notices.

A CSV target column's values become classes 0..K−1 in sorted order (numerically for a numeric
column, alphabetically for text); `--target COL:VALUE` makes VALUE the positive class (1) of a
two-class label instead. A sensitive column's values become groups 0..G−1 the same way, at most
`MAX_GROUPS`; a numeric column with more values is binned by the user: `--sensitive COL:qN` (N
quantile groups) or `--sensitive COL:E1,E2,...` (groups cut at those values, each group holding
the values from its lower edge up to, not including, the next). Both the option's spec and the
resulting encoding enter the record (`defcon.planning.notices`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from defcon.engine.data_checks import MAX_GROUPS, check_groups
from defcon.errors import DefconError
from defcon.planning.notices import Notice

SHOWN = 10  # classes or groups listed in one notice line
_QUANTILES = re.compile(r"q(\d+)")


def split_spec(spec: str, columns: Sequence[str], option: str) -> tuple[str, str | None]:
    """(column, what follows its ':') of `--target COL[:VALUE]` or `--sensitive COL[:BINS]`; a
    column whose own name holds ':' is taken whole."""
    if spec in columns or ":" not in spec:
        return spec, None
    for cut in [i for i, ch in enumerate(spec) if ch == ":"]:
        if spec[:cut] in columns:
            return spec[:cut], spec[cut + 1 :]
    column = spec.split(":", 1)[0]
    raise DefconError(f"{option} '{spec}': '{column}' is not a column; columns: "
                      f"{', '.join(columns)}")  # fmt: skip


def _name(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(f"{i} = '{n}'" for i, n in enumerate(names[:SHOWN]))
    return shown + (f", … ({len(names)} in all)" if len(names) > SHOWN else "")


def encode_labels(values: Any, column: str, positive: str | None) -> tuple[np.ndarray, Notice]:
    """Class ids of a target column and the notice saying which value is which class."""
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    raw = values.to_numpy() if numeric else values.astype(str).to_numpy()
    classes, ids = np.unique(raw, return_inverse=True)
    names = [_name(c) for c in classes]
    order = "numeric" if numeric else "alphabetical"
    if positive is not None:
        if positive not in names:
            raise DefconError(f"--target '{column}:{positive}': '{positive}' is not a value of "
                              f"'{column}'; its values: {', '.join(names[:SHOWN])}")  # fmt: skip
        if len(names) != 2:
            raise DefconError(
                f"--target '{column}:{positive}': a positive class applies to two classes, and "
                f"'{column}' has {len(names)}; give --target {column} alone"
            )
        ids = (ids == names.index(positive)).astype(np.int64)
        names = [n for n in names if n != positive] + [positive]
        how = f"'{positive}' is positive, as --target {column}:{positive} asks"
    elif len(names) == 2:
        how = (f"'{names[1]}' is positive by {order} order; --target {column}:VALUE picks "
               "another")  # fmt: skip
    else:
        how = f"{order} order"
    text = f"--target '{column}': classes {_listed(names)}"
    if len(names) == 2:
        text = f"--target '{column}': class 0 = '{names[0]}', class 1 = '{names[1]}'"
    return ids.astype(np.int64), Notice(
        kind="label_encoding", subject=column, text=f"{text} ({how})",
        labels={str(i): n for i, n in enumerate(names)},
    )  # fmt: skip


def encode_groups(
    values: Any, column: str, bins: str | None, path: object
) -> tuple[np.ndarray, Notice]:
    """Group ids of a sensitive column (binned when `bins` is given) and the notice saying which
    values each group holds; more than MAX_GROUPS groups is refused, naming the bins to pass."""
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if bins is None:
        raw = values.to_numpy() if numeric else values.astype(str).to_numpy()
        groups, ids = np.unique(raw, return_inverse=True)
        if len(groups) < 2:
            check_groups(raw, f"--sensitive '{column}'")  # one group: refused there
        if len(groups) > MAX_GROUPS:
            how = "merge its values into at most that many groups in the file"
            if numeric:
                low, high = np.quantile(raw.astype(float), [0.25, 0.75])
                how = (
                    f"bin it: --sensitive {column}:q4 (4 quantile groups) or --sensitive "
                    f"{column}:{low:g},{high:g} (groups cut at those values)"
                )
            raise DefconError(
                f"--sensitive '{column}' has {len(groups)} distinct values; a sensitive attribute "
                f"names at most {MAX_GROUPS} groups: {how}"
            )
        names = [_name(g) for g in groups]
        counts = np.bincount(ids, minlength=len(names))
        text = f"--sensitive '{column}': groups {_listed(names)}"
        return ids.astype(np.int64), Notice(
            kind="sensitive_groups", subject=column,
            text=f"{text} ({', '.join(str(int(c)) for c in counts[:SHOWN])} rows)",
            labels={str(i): n for i, n in enumerate(names)},
            values={str(i): float(c) for i, c in enumerate(counts)},
        )  # fmt: skip
    if not numeric:
        raise DefconError(f"--sensitive '{column}:{bins}': only a numeric column can be binned, "
                          f"and '{column}' of '{path}' holds text")  # fmt: skip
    data = values.to_numpy(dtype=float)
    edges = _edges(data, column, bins)
    cut = np.searchsorted(edges, data, side="right")
    present, ids = np.unique(cut, return_inverse=True)
    bounds = [-np.inf, *edges, np.inf]
    names = [_interval(column, bounds[g], bounds[g + 1]) for g in present]
    counts = np.bincount(ids, minlength=len(names))
    if len(names) < 2:
        raise DefconError(f"--sensitive '{column}:{bins}' puts every row in one group ("
                          f"{names[0]}); fairness needs at least two: choose other edges")  # fmt: skip
    described = ", ".join(f"{i} = {n} ({int(c)} rows)" for i, (n, c) in
                          enumerate(zip(names, counts, strict=True)))  # fmt: skip
    return ids.astype(np.int64), Notice(
        kind="sensitive_groups", subject=column,
        text=f"--sensitive '{column}:{bins}': {len(names)} groups binned from {column}: "
        f"{described}",
        labels={str(i): n for i, n in enumerate(names)} | {"bins": bins},
        values={str(i): float(c) for i, c in enumerate(counts)},
    )  # fmt: skip


def _edges(data: np.ndarray, column: str, bins: str) -> np.ndarray:
    accepted = (
        f"accepted: {column}:qN (N quantile groups, 2..{MAX_GROUPS}) or {column}:E1,E2,... "
        "(increasing numbers)"
    )
    quantiles = _QUANTILES.fullmatch(bins)
    if quantiles:
        n = int(quantiles.group(1))
        if not 2 <= n <= MAX_GROUPS:
            raise DefconError(f"--sensitive '{column}:{bins}': {n} groups; {accepted}")
        return np.unique(np.quantile(data, np.arange(1, n) / n))
    try:
        edges = np.array([float(part) for part in bins.split(",")])
    except ValueError:
        raise DefconError(f"--sensitive '{column}:{bins}' is not a binning; {accepted}") from None
    if not np.isfinite(edges).all() or (np.diff(edges) <= 0).any() or len(edges) >= MAX_GROUPS:
        raise DefconError(f"--sensitive '{column}:{bins}': the edges must be finite, increasing "
                          f"and fewer than {MAX_GROUPS}; {accepted}")  # fmt: skip
    return edges


def _interval(column: str, low: float, high: float) -> str:
    if low == -np.inf:
        return f"{column} < {high:g}"
    if high == np.inf:
        return f"{column} ≥ {low:g}"
    return f"{low:g} ≤ {column} < {high:g}"
