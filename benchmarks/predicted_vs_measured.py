"""Benchmark: each prediction technique's labels vs the measured labels (thin entry point).

Same options as `defcon bench`; by default every pair and the committed triples on Fashion-MNIST
and Adult with the quick profile, 3 seeds (up to 5 while a verdict is inconclusive), repeated on
the disjoint seed set from 1000 for the label flip rate; results under benchmarks/results/.

    python benchmarks/predicted_vs_measured.py --workers 2
"""

from __future__ import annotations

import sys
from pathlib import Path

from defcon.cli import app

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    defaults = [
        "bench", "--triples", str(HERE / "triples.toml"), "--out", str(HERE / "results"),
        "--cache", str(HERE.parent / ".defcon-cache"),
        "--seeds", "3", "--max-seeds", "5", "--stability-start", "1000",
    ]  # fmt: skip
    app(defaults + sys.argv[1:], prog_name="predicted_vs_measured.py")
