"""Prints how long `plan` takes on the built-in catalog (it must stay under a second), alone and
with the dataset's facts and the measured records of benchmarks/results/records."""

from __future__ import annotations

import time
from pathlib import Path

from defcon.catalog import builtin_catalog
from defcon.planning.evidence import builtin_facts, load_evidence
from defcon.planning.planner import parse_risks, plan

RECORDS = Path(__file__).parent / "results" / "records"

if __name__ == "__main__":
    catalog = builtin_catalog()
    risks = parse_risks("evasion,membership_inference,model_theft")
    start = time.perf_counter()
    found = plan(risks, catalog)
    took = time.perf_counter() - start
    print(f"plan: {len(found)} combinations over {len(catalog)} defenses in {took:.3f} s")
    start = time.perf_counter()
    evidence = load_evidence(RECORDS, "fmnist")
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    found = plan(risks, catalog, data=builtin_facts("fmnist"), evidence=evidence)
    took = time.perf_counter() - start
    measured = sum(len(v) for v in evidence.values())
    print(
        f"plan --dataset fmnist --records: {len(found)} combinations in {took:.3f} s "
        f"(+ {loaded:.3f} s reading {measured} fmnist records)"
    )
