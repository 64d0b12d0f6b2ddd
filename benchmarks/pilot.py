"""The pilot technique beside the declaration techniques: accuracy and what each costs.

For every conclusive combination of the given record folders (default: the benchmark's), the
pilot (`defcon.measure.pilot`: the combination composed on a small slice, tiny profile, seeds 100–102;
the `factors` label where that short run cannot tell) predicts a label; the declaration
techniques' labels are recomputed from today's declarations (`load_records`). Writes OUT/predictions.json
(resumable: a combination already predicted is not re-run; written atomically after each) and
OUT/RESULTS.md: per dataset, each technique's accuracy and balanced accuracy on the same
combinations, how often the pilot fell back, and the cost — the pilot's seconds against the full
measurement's (the records' own wall time), both with a model cache shared across combinations.

    python benchmarks/pilot.py --cache .defcon-cache-pilot
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from defcon.bench.run import load_records
from defcon.catalog import builtin_catalog
from defcon.checker import TECHNIQUES, check
from defcon.cli.main import run_script
from defcon.errors import DefconError
from defcon.measure.pilot import PILOT_PROFILE, PILOT_SEED_START, PILOT_SEEDS, PilotTechnique
from defcon.planning.records import CompositionRecord
from defcon.report.scoring import score, score_text
from defcon.storage import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
DEFAULT_RECORDS = (HERE / "results" / "records",)
OUT = HERE / "results" / "pilot"


def key(record: CompositionRecord) -> str:
    return f"{record.dataset}:{'+'.join(record.order)}"


def predict_all(
    records: Sequence[CompositionRecord], predictions: Path, cache: str, log=print
) -> dict[str, dict]:
    """The pilot's prediction for every record, resuming from `predictions`."""
    done: dict[str, dict] = json.loads(predictions.read_text()) if predictions.exists() else {}
    pilots: dict[str, PilotTechnique] = {}
    catalog = builtin_catalog()
    todo = [r for r in records if key(r) not in done]
    log(f"{len(records)} conclusive combinations, {len(records) - len(todo)} already predicted")
    for number, record in enumerate(todo, 1):
        if record.dataset not in pilots:
            pilots[record.dataset] = PilotTechnique(record.dataset, cache_dir=cache)
        result = pilots[record.dataset].run([catalog[name] for name in record.order])
        done[key(record)] = {
            "label": result.verdict.label,
            "measured_on_slice": result.measured_on_slice,
            "fell_back": result.fell_back,
            "seconds": round(result.seconds, 2),
        }
        atomic_write_json(predictions, done)
        log(f"[{number}/{len(todo)}] {key(record)}: {result.verdict.label} "
            f"({result.measured_on_slice} on the slice, {result.seconds:.0f} s)")  # fmt: skip
    return done


def prediction_seconds(technique: str, records: Sequence[CompositionRecord]) -> float:
    """Wall time a declaration technique takes to label these combinations (no training)."""
    catalog = builtin_catalog()
    started = time.perf_counter()
    for record in records:
        check([catalog[name] for name in record.order], technique=technique)
    return time.perf_counter() - started


def results_markdown(records: Sequence[CompositionRecord], predicted: dict[str, dict]) -> str:
    scored = [
        r.model_copy(update={"predicted": {**r.predicted, "pilot": predicted[key(r)]["label"]}})
        for r in records
        if key(r) in predicted
    ]
    techniques = [*TECHNIQUES, "pilot"]
    lines = [
        "# The pilot technique beside the declaration techniques",
        "",
        f"Pilot: each combination composed with the `{PILOT_PROFILE}` profile on seeds "
        f"{PILOT_SEED_START}–{PILOT_SEED_START + PILOT_SEEDS - 1} (disjoint from the "
        "benchmark's), labelled by the benchmark's rule; where that short run is inconclusive or "
        "a defense is not effective alone on the slice, the `factors` label. The declaration "
        "techniques' labels are recomputed from today's declarations. Scored on the "
        f"{len(scored)} conclusive combinations of the records given.",
        "",
        "| dataset | technique | n | accuracy | balanced accuracy | missed conflicts | "
        "false alarms | seconds to predict them |",
        "|---|---|---|---|---|---|---|---|",
    ]
    datasets = sorted({r.dataset for r in scored})
    for dataset in [*datasets, "all"]:
        chosen = [r for r in scored if dataset in ("all", r.dataset)]
        for technique in techniques:
            s = score(technique, chosen)
            cost = (
                sum(predicted[key(r)]["seconds"] for r in chosen)
                if technique == "pilot"
                else prediction_seconds(technique, chosen)
            )
            lines.append(
                f"| {dataset} | {technique} | {s.n} | {score_text(s.accuracy)} | "
                f"{score_text(s.balanced_accuracy)} | {s.confusion['ineffective']['effective']} | "
                f"{s.confusion['effective']['ineffective']} | {cost:.3g} |"
            )
    lines += [
        "",
        "## What the pilot read, and what it cost",
        "",
        "| dataset | combinations | short run conclusive | fell back to factors | short run "
        "agrees with the full measurement (where conclusive) | pilot seconds (total; mean) | "
        "full measurement seconds (total; mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in [*datasets, "all"]:
        chosen = [r for r in scored if dataset in ("all", r.dataset)]
        entries = [predicted[key(r)] for r in chosen]
        conclusive = [(r, e) for r, e in zip(chosen, entries, strict=True) if not e["fell_back"]]
        agree = sum(1 for r, e in conclusive if e["measured_on_slice"] == r.label)
        pilot_s = [e["seconds"] for e in entries]
        full_s = [r.wall_time_s for r in chosen]
        lines.append(
            f"| {dataset} | {len(chosen)} | {len(conclusive)} | {len(chosen) - len(conclusive)} | "
            f"{agree} of {len(conclusive)} | {sum(pilot_s):.0f}; {statistics.fmean(pilot_s):.0f} | "
            f"{sum(full_s):.0f}; {statistics.fmean(full_s):.0f} |"
        )
    lines += [
        "",
        "Both costs count a model once, in the combination that trained it: later combinations "
        "reuse the no-defense and single-defense models from the cache. The pilot's seconds are "
        "wall time on this machine while other jobs may have shared it; the full measurement's "
        "are its records' own wall time.",
        "",
        "Produced by `python benchmarks/pilot.py`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="*", default=[str(p) for p in DEFAULT_RECORDS])
    parser.add_argument("--cache", default=str(HERE.parent / ".defcon-cache-pilot"))
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    os.environ.setdefault("DEFCON_PROGRESS", "0")
    out = Path(args.out)
    records = [r for f in args.records for r in load_records(Path(f)) if r.conclusive]
    if not records:
        raise DefconError(f"no conclusive record under {', '.join(args.records)}")
    predicted = predict_all(records, out / "predictions.json", args.cache)
    text = results_markdown(records, predicted)
    atomic_write_text(out / "RESULTS.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    run_script(main)
