"""Benchmark: each prediction technique's labels vs the measured labels (thin entry point).

Same options as `defcon bench`; by default every pair and the committed triples on Fashion-MNIST
and Adult (among the BENCHMARKED defenses) with the quick profile, 3 seeds (up to 10 while a verdict is inconclusive), repeated on
the disjoint seed set from 1000 for the label flip rate; results under benchmarks/results/.

    python benchmarks/predicted_vs_measured.py --workers 2
"""

from __future__ import annotations

import sys
from pathlib import Path

from defcon.cli.main import app

HERE = Path(__file__).resolve().parent
# The defenses this benchmark's labels were measured on. The four added later (issue 14) are
# measured by prospective.py, on combinations the techniques' predictions were committed for first.
BENCHMARKED = (
    "adversarial_training", "backdoor_finetuning", "backdoor_pruning", "certified_watermark",
    "data_watermark", "dataset_inference", "dp_sgd", "explanations", "group_fairness",
    "model_watermark", "output_watermark",
)  # fmt: skip

if __name__ == "__main__":
    defaults = [
        "bench", "--triples", str(HERE / "triples.toml"), "--out", str(HERE / "results"),
        "--cache", str(HERE.parent / ".defcon-cache"),
        "--seeds", "3", "--max-seeds", "10", "--stability-start", "1000",
        "--defenses", ",".join(BENCHMARKED),
    ]  # fmt: skip
    app(defaults + sys.argv[1:], prog_name="predicted_vs_measured.py")
