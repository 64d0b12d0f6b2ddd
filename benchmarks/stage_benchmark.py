"""Shared driver of the stage benchmarks: each defense alone vs no defense, 3 seeds, real data."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

from defcon.catalog import builtin_catalog
from defcon.measure.composer import Composer, applicability_problem
from defcon.measure.standalone import measure_standalone, standalone_markdown
from defcon.storage import atomic_write_text

ROOT = Path(__file__).resolve().parent


def defenses_at(*stages: str) -> list[str]:
    """The built-in defenses of these stages, in catalog order: a new defense joins by its spec."""
    return [spec.name for spec in builtin_catalog().values() if str(spec.stage) in stages]


def main(defenses: Sequence[str], title: str, output: str) -> None:
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--datasets", default="fmnist,adult")
    parser.add_argument("--defenses", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cache", default=str(ROOT.parent / ".defcon-cache"))
    parser.add_argument("--out", default=str(ROOT / "results" / output))
    args = parser.parse_args()
    if args.defenses:
        unknown = sorted(set(args.defenses.split(",")) - set(defenses))
        if unknown:
            parser.error(f"--defenses: {', '.join(unknown)} not among {', '.join(defenses)}")
        defenses = [name for name in defenses if name in args.defenses.split(",")]
    os.environ.setdefault("DEFCON_PROGRESS", "0")
    started = time.perf_counter()
    results, skipped = [], []
    for dataset in args.datasets.split(","):
        composer = Composer(dataset, profile=args.profile, cache_dir=args.cache)
        for name in defenses:
            problem = applicability_problem(builtin_catalog()[name], composer.dataset(0))
            if problem:
                skipped.append(f"- {dataset}: skipped {name}: {problem}")
                continue
            result = measure_standalone(composer, name, args.seeds)
            print(f"{dataset} {name}: {result.model_dump_json()}", flush=True)
            results.append(result)
    text = standalone_markdown(results, title)
    text += (
        f"\n\nProfile `{args.profile}`, seeds 0–{args.seeds - 1}, mean ± std over seeds; metrics on "
        "the test split, thresholds/calibration on validation data. Wall time per row includes "
        "training both models unless they came from the shared cache. Total wall time: "
        f"{time.perf_counter() - started:.0f} s. Produced by `python benchmarks/{output[:-3]}.py`.\n"
    )
    if skipped:
        text += "\n" + "\n".join(skipped) + "\n"
    atomic_write_text(args.out, text)
    print(text)
