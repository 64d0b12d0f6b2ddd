"""A tiny synthetic table with a sensitive column among its features, for the fairness defenses'
tests: features correlate with the group, labels depend on both (an unfair model to correct)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from defcon.data import UserData, read_csv


def unfair_table(folder: Path, rows: int = 1500, seed: int = 0) -> UserData:
    """A CSV (sex, four numeric features, label) read as a user's dataset: `sex` is the
    sensitive attribute and also a one-hot feature group, as Adult keeps it."""
    rng = np.random.default_rng(seed)
    male = rng.random(rows) < 0.6
    a = rng.normal(size=rows) + 0.8 * male
    b = rng.normal(size=rows) - 0.5 * male
    c, d = rng.normal(size=rows), rng.normal(size=rows)
    logit = 1.2 * a - 0.8 * b + 0.5 * c + 1.0 * male - 0.6
    label = rng.random(rows) < 1 / (1 + np.exp(-logit))
    path = folder / "unfair.csv"
    lines = ["sex,a,b,c,d,label"] + [
        f"{'M' if m else 'F'},{a[i]:.4f},{b[i]:.4f},{c[i]:.4f},{d[i]:.4f},{int(label[i])}"
        for i, m in enumerate(male)
    ]
    path.write_text("\n".join(lines) + "\n")
    return read_csv(path, target="label", sensitive="sex")
