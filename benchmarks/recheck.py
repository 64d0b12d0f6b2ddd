"""Re-measure committed composition records from an empty model cache and compare every value.

A record keeps every per-seed value of every arm (no defense, each defense alone, combined). This
script measures the same combination again, on the record's dataset, profile, settings, order and
first seeds, in a fresh cache, and prints the largest difference per defense, metric and arm. A
cache that carries models across sessions is only as good as its key: a value that differs here
came from a model or measurement the current code does not reproduce.

    python benchmarks/recheck.py RECORD.json [RECORD.json ...] [--seeds 2]

Exit status 1 when any value differs by more than `--atol` (default 1e-9), 0 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from defcon.measure.composer import Composer
from defcon.planning.records import CompositionRecord
from defcon.report.reports import load_record

ARMS = ("no_defense", "alone", "combined")


def remeasured(record: CompositionRecord, seeds: int, cache: Path) -> CompositionRecord:
    """The record's combination measured again on its first `seeds` seeds, in `cache`."""
    composer = Composer(
        record.dataset, profile=record.profile, cache_dir=cache, configs=record.configs,
        model=record.model, device=record.device,
    )  # fmt: skip
    names = list(record.order if record.order_choice == "given" else record.defenses)
    return composer.compose(
        names, seeds=seeds, seed_start=record.seed_start, force=True,
        tolerances=record.tolerances or None, order=record.order_choice,
    )  # fmt: skip


def differences(old: CompositionRecord, new: CompositionRecord) -> list[tuple[str, float]]:
    """(defense.metric.arm, largest |difference| over the seeds both read) for every series."""
    rows = []
    for before, after in zip(old.results, new.results, strict=True):
        for v_old, v_new in zip(before.metrics, after.metrics, strict=True):
            for arm in ARMS:
                a, b = getattr(v_old, arm).raw(), getattr(v_new, arm).raw()
                n = min(len(a), len(b))
                gap = max((_gap(x, y) for x, y in zip(a[:n], b[:n], strict=True)), default=0.0)
                rows.append((f"{v_old.defense}.{v_old.metric}.{arm}", gap))
    return rows


def _gap(x: float, y: float) -> float:
    if math.isnan(x) and math.isnan(y) or x == y:  # equal infinities included
        return 0.0
    return abs(x - y) if math.isfinite(x) and math.isfinite(y) else math.inf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=1, help="first seeds of each record to redo")
    parser.add_argument("--atol", type=float, default=1e-9)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    failed = False
    for path in args.records:
        record = load_record(path)
        seeds = min(args.seeds, len(record.seeds))
        with tempfile.TemporaryDirectory(prefix="defcon-recheck-") as cache:
            new = remeasured(record, seeds, Path(cache))
        rows = differences(record, new)
        off = [(name, gap) for name, gap in rows if gap > args.atol]
        failed |= bool(off)
        print(f"{path.name}: seeds {record.seeds[:seeds]}, {len(rows)} series, "
              f"{len(off)} differ by more than {args.atol:g}")  # fmt: skip
        for name, gap in off:
            print(f"  {name}: up to {gap:.6g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
