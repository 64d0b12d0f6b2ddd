"""`defcon plan` on a small catalog where the answer is known, and its bad-input line."""

from __future__ import annotations

import time

import pytest

from defcon.catalog import builtin_catalog
from defcon.errors import DefconError
from defcon.planner import parse_risks, plan
from defcon.vocabulary import Risk

RISKS = frozenset({Risk.EVASION, Risk.MEMBERSHIP_INFERENCE, Risk.MODEL_THEFT})


def test_every_plan_covers_every_risk_and_kept_plans_rank_first() -> None:
    found = plan(RISKS, builtin_catalog())
    catalog = builtin_catalog()
    assert found
    for cand in found:
        covered = frozenset().union(*(catalog[n].mitigates for n in cand.defenses))
        assert covered >= RISKS
    kept = [c.excluded is None for c in found]
    assert kept == sorted(kept, reverse=True)


def test_known_clash_is_excluded_with_its_reason() -> None:
    """certified_watermark and dp_sgd both need the privacy wrapper slot: never one loop."""
    small = {
        n: builtin_catalog()[n]
        for n in ("dp_sgd", "certified_watermark", "adversarial_training", "output_watermark")
    }
    found = plan(RISKS, small)
    by = {frozenset(c.defenses): c for c in found}
    clash = by[frozenset({"adversarial_training", "certified_watermark", "dp_sgd"})]
    assert clash.excluded is not None and "cannot share a training loop" in clash.excluded
    good = by[frozenset({"adversarial_training", "output_watermark", "dp_sgd"})]
    assert good.excluded is None
    assert found[0] is good


def test_builtin_catalog_plans_in_under_a_second() -> None:
    start = time.perf_counter()
    plan(RISKS, builtin_catalog())
    assert time.perf_counter() - start < 1.0


def test_bad_risk_names_the_accepted_ones() -> None:
    with pytest.raises(DefconError, match="accepted: evasion"):
        parse_risks("evasion,bogus")


def test_cli_bad_risk_is_one_error_line_exit_2() -> None:
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [str(Path(sys.executable).with_name("defcon")), "plan", "--risks", "evasion,bogus"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "membership_inference" in lines[0]
