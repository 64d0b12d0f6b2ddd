"""Prints how long `plan` takes on the built-in catalog (it must stay under a second)."""

from __future__ import annotations

import time

from defcon.catalog import builtin_catalog
from defcon.planner import parse_risks, plan

if __name__ == "__main__":
    catalog = builtin_catalog()
    risks = parse_risks("evasion,membership_inference,model_theft")
    start = time.perf_counter()
    found = plan(risks, catalog)
    took = time.perf_counter() - start
    print(f"plan: {len(found)} combinations over {len(catalog)} defenses in {took:.3f} s")
