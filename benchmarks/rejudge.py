"""Re-judge saved composition records with the current verdict rule, in place.

The per-seed measurements, seeds and tolerances of each record stay as they are; only the
verdicts, outcomes and labels are recomputed (`defcon.planning.records.rejudged`). Used when the rule
changes after a long benchmark: no measurement is redone, nothing measured is lost.

    python benchmarks/rejudge.py benchmarks/results/records benchmarks/results/stability/records
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from defcon.planning.records import rejudged
from defcon.report.reports import load_record, save_record


def main(folders: list[str]) -> None:
    changes: Counter[tuple[str, str]] = Counter()
    total = 0
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.json")):
            record = load_record(path)
            again = rejudged(record)
            total += 1
            if again != record:
                save_record(again, path)
            changes[(record.label, again.label)] += 1
    print(f"{total} records re-judged")
    for (before, after), count in sorted(changes.items()):
        print(f"  {before:>20} → {after:<20} {count}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["benchmarks/results/records", "benchmarks/results/stability/records"])
