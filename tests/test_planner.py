"""`defcon plan` on a small catalog where the answer is known, and its bad-input line."""

from __future__ import annotations

import time

import pytest

from defcon.catalog import builtin_catalog
from defcon.errors import DefconError
from defcon.planning.planner import parse_risks, plan
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


def test_dataset_leaves_out_inapplicable_defenses_and_says_why() -> None:
    """dataset_inference declares it cannot prove ownership on tabular data (adult), and
    confidence_masking that the label it keeps still leaks membership there."""
    from defcon.planning.evidence import builtin_facts
    from defcon.planning.planner import inapplicable

    adult = builtin_facts("adult")
    assert adult.sensitive_attribute == "sex"
    why = inapplicable(RISKS, builtin_catalog(), adult)
    assert sorted(why) == ["confidence_masking", "dataset_inference"]
    assert all("tabular" in reason for reason in why.values())
    found = plan(RISKS, builtin_catalog(), data=adult)
    assert found and all(not set(why) & set(c.defenses) for c in found)
    fmnist = plan(RISKS, builtin_catalog(), data=builtin_facts("fmnist"))
    assert any("dataset_inference" in c.defenses for c in fmnist)


def test_unknown_dataset_names_the_built_in_ones() -> None:
    from defcon.planning.evidence import builtin_facts

    with pytest.raises(DefconError, match="digits, fmnist, adult, compas"):
        builtin_facts("nope")


SMALL = ("adversarial_training", "randomized_smoothing", "model_watermark", "output_watermark")


def _write(folder, fake_record, defenses, label, dataset="fmnist", cost=0.0):  # noqa: ANN001
    from defcon.effectiveness import Summary

    record = fake_record(dataset, defenses).model_copy(
        update={"label": label, "clean_accuracy_combined": Summary.of([0.9 - cost])}
    )
    path = folder / f"{dataset}-{'+'.join(defenses)}.json"
    path.write_text(record.model_dump_json())
    return path


def test_measured_evidence_reorders_and_excludes(tmp_path, fake_record) -> None:  # noqa: ANN001
    """Known answer: with no records the four pairs rank by name; a pair measured effective
    moves first, one measured ineffective is dropped naming its record, and records of another
    dataset or files that are not records change nothing."""
    from defcon.planning.evidence import builtin_facts, load_evidence

    small = {n: builtin_catalog()[n] for n in SMALL}
    risks = frozenset({Risk.EVASION, Risk.MODEL_THEFT})
    before = [c.defenses for c in plan(risks, small) if c.excluded is None]
    assert len(before) == 4 and before[0] == ("adversarial_training", "output_watermark")
    best = ("output_watermark", "randomized_smoothing")
    cheap = ("model_watermark", "randomized_smoothing")
    _write(tmp_path, fake_record, best, "effective", cost=0.01)
    _write(tmp_path, fake_record, cheap, "effective", cost=0.05)
    bad = _write(tmp_path, fake_record, ("adversarial_training", "output_watermark"), "ineffective")
    _write(tmp_path, fake_record, ("adversarial_training", "model_watermark"), "ineffective",
           dataset="adult")  # fmt: skip
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    warnings: list[str] = []
    evidence = load_evidence(tmp_path, "fmnist", warnings.append)
    assert len(warnings) == 1 and "notes.json" in warnings[0]
    found = plan(risks, small, data=builtin_facts("fmnist"), evidence=evidence)
    kept = [c for c in found if c.excluded is None]
    assert [tuple(sorted(c.defenses)) for c in kept[:2]] == [best, cheap]
    assert kept[2].defenses == ("adversarial_training", "model_watermark")
    dropped = [c for c in found if c.excluded is not None]
    assert len(dropped) == 1 and str(bad) in str(dropped[0].excluded)
    assert "measured ineffective" in str(dropped[0].excluded)


def test_cli_plan_prints_exclusions_and_errors_name_the_uncovered_risk(tmp_path) -> None:  # noqa: ANN001
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("defcon"))
    done = subprocess.run(
        [exe, "plan", "--risks", "evasion,model_theft", "--dataset", "adult"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "not applicable: dataset_inference" in done.stdout
    done = subprocess.run(
        [exe, "plan", "--risks", "evasion,discrimination", "--dataset", "fmnist"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: no defense applicable to fmnist covers discrimination"
    ]
    done = subprocess.run(
        [exe, "plan", "--risks", "evasion", "--records", str(tmp_path / "missing")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "is not a folder" in done.stderr


def test_a_forced_conflict_carries_alternatives_applicable_to_the_data() -> None:
    """plan_combination (compose's planning) keeps the planner's alternatives for the record."""
    from defcon.planning.combination import plan_combination
    from defcon.planning.evidence import builtin_facts

    catalog = builtin_catalog()
    pair = ["model_watermark", "backdoor_pruning"]
    planned = plan_combination(pair, catalog, builtin_facts("fmnist"), force=True)
    assert not planned.verdict.effective and planned.alternatives
    for order in planned.alternatives:
        assert set(order) != set(pair)
        covered = frozenset().union(*(catalog[n].mitigates for n in order))
        assert covered >= {Risk.MODEL_THEFT, Risk.POISONING}
    on_adult = plan_combination(pair, catalog, builtin_facts("adult"), force=True).alternatives
    assert on_adult and all("dataset_inference" not in order for order in on_adult)
    assert any("dataset_inference" in order for order in planned.alternatives)
    with pytest.raises(DefconError, match="conflict-free alternatives for model_theft, poisoning"):
        plan_combination(pair, catalog, builtin_facts("fmnist"))
    fine = plan_combination(["model_watermark", "explanations"], catalog, builtin_facts("fmnist"))
    assert fine.alternatives == ()


def test_records_without_alternatives_still_load(fake_record) -> None:  # noqa: ANN001
    from defcon.planning.records import CompositionRecord

    data = fake_record().model_dump(mode="json")
    data.pop("alternatives")
    assert CompositionRecord.model_validate(data).alternatives == ()
