"""Prospective evaluation of the prediction techniques on defenses they were not shaped on.

Three steps, each a separate commit so git history shows the order:

    python benchmarks/prospective.py predict --new a,b,c   # writes predictions.json; commit it
    python benchmarks/prospective.py measure --workers 2   # measures exactly those combinations
    python benchmarks/prospective.py score                 # writes RESULTS.md from the frozen file

`predict` records every registered technique's label for every pair that involves a new defense
(and the triples of benchmarks/prospective_triples.toml that do) on each dataset where all its
defenses apply, with a hash of every declaration it read. It refuses to overwrite the file:
a technique improved later is scored on the next new defenses, not on these. `score` reads the
labels from the file, never re-predicts, and says whether the declarations still hash the same
and which commits touched the file.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from defcon.bench import combinations_for, load_triples, run_bench
from defcon.catalog import builtin_catalog
from defcon.checker import TECHNIQUES, check
from defcon.cli import run_script
from defcon.errors import DefconError
from defcon.records import CompositionRecord, repredicted
from defcon.reports import load_record
from defcon.scoring import TechniqueScore, score, score_text
from defcon.storage import atomic_write_json, atomic_write_text
from defcon.vocabulary import DefenseSpec

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "prospective"
PREDICTIONS = OUT / "predictions.json"
BENCH = OUT / "bench"
TRIPLES = HERE / "prospective_triples.toml"
DATASETS = ("fmnist", "adult")


def _canonical(value: object) -> object:
    """JSON with sets in a fixed order: a frozenset dumps in hash order, which varies by process."""
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [_canonical(item) for item in value]
        return sorted(items) if all(isinstance(item, str) for item in items) else items
    return value


def spec_hash(spec: DefenseSpec) -> str:
    """Hash of a declaration as the techniques read it (everything but the mechanism's path)."""
    dumped = _canonical(spec.model_dump(mode="json", exclude={"implementation"}))
    for field in ("moves", "depends_on"):  # `reads` came later: unset, it hashes as before
        for claim in dumped.get(field, []):
            if claim.get("reads") is False:
                del claim["reads"]
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _key(dataset: str, names: Sequence[str]) -> str:
    return f"{dataset}:{'+'.join(sorted(names))}"


def predict(new: Sequence[str], datasets: Sequence[str], out: Path) -> dict:
    """Every technique's label for every applicable combination involving a new defense."""
    if out.exists():
        raise DefconError(
            f"{out} exists; prospective predictions are written once and never edited "
            "(score them, or predict the next new defenses into another file)"
        )
    catalog = builtin_catalog()
    catalog.resolve(new, minimum=1)
    others = [name for name in catalog if name not in new]
    pairs = [tuple(sorted(p)) for p in itertools.combinations(sorted(new), 2)]
    pairs += [tuple(sorted((n, o))) for n in new for o in others]
    triples = [t for t in load_triples(TRIPLES, catalog) if set(t) & set(new)]
    entries, skipped = [], []
    for dataset in datasets:
        keep, skip = combinations_for(dataset, sorted(pairs), triples, catalog=catalog)
        skipped += [s.model_dump(mode="json") for s in skip]
        for names in keep:
            specs = catalog.resolve(names)
            verdicts = {t: check(specs, technique=t, catalog=catalog) for t in sorted(TECHNIQUES)}
            entries.append(
                {
                    "dataset": dataset,
                    "defenses": list(names),
                    "predicted": {t: v.label for t, v in verdicts.items()},
                    "order": {t: list(v.order) for t, v in verdicts.items()},
                    "explanation": {t: v.explanation for t, v in verdicts.items()},
                }
            )
    document = {
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": _git("rev-parse", "HEAD"),
        "hashing": "canonical",
        "new_defenses": sorted(new),
        "techniques": sorted(TECHNIQUES),
        "declarations": {name: spec_hash(catalog[name]) for name in sorted(catalog)},
        "combinations": entries,
        "skipped": skipped,
    }
    atomic_write_json(out, document)
    return document


def _combinations(document: dict) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    combos = {tuple(e["defenses"]) for e in document["combinations"]}
    return sorted(c for c in combos if len(c) == 2), sorted(c for c in combos if len(c) == 3)


def measure(document: dict, workers: int, seeds: int, max_seeds: int, cache: str) -> None:
    """Measure exactly the predicted combinations (bench semantics: resumable, cached)."""
    pairs, triples = _combinations(document)
    datasets = sorted({e["dataset"] for e in document["combinations"]})
    result = run_bench(
        datasets,
        pairs=pairs,
        triples=triples,
        seeds=seeds,
        max_seeds=max_seeds,
        workers=workers,
        out=BENCH,
        cache_dir=cache,
        log=lambda message: print(message, flush=True),
    )
    from defcon.bench_report import write_results

    write_results(result, BENCH)  # the full per-combination report, current predictions


def _frozen(record: CompositionRecord, predicted: dict[str, dict[str, str]]) -> CompositionRecord:
    return record.model_copy(update={"predicted": predicted[_key(record.dataset, record.defenses)]})


def _score_rows(records: Sequence[CompositionRecord], techniques: Sequence[str]) -> list[str]:
    datasets = sorted({r.dataset for r in records})
    head = "| technique | n | accuracy | balanced accuracy | " + " | ".join(
        f"{d} bal. acc. (n)" for d in datasets
    )
    rows = [head + " | missed conflicts | false alarms |", "|" + "---|" * (6 + len(datasets))]
    for technique in techniques:
        overall: TechniqueScore = score(technique, records)
        per = [score(technique, [r for r in records if r.dataset == d]) for d in datasets]
        cells = [f"{score_text(s.balanced_accuracy)} ({s.n})" for s in per]
        missed = overall.confusion["ineffective"]["effective"]
        alarms = overall.confusion["effective"]["ineffective"]
        rows.append(
            f"| {technique} | {overall.n} | {score_text(overall.accuracy)} | "
            f"{score_text(overall.balanced_accuracy)} | {' | '.join(cells)} | {missed} | {alarms} |"
        )
    return rows


READ = ["pipeline_stages/*/*.toml", "defcon/vocabulary.py", "defcon/checker"]
"""What the techniques read: a change here changes their predictions."""


def held_out_keys(by_path: Mapping[Path, CompositionRecord]) -> tuple[str, set[str]]:
    """(the last commit that changed what the techniques read, the combinations whose records
    entered git after it or are not committed yet): labels today's techniques were not shaped on."""
    last = _git("log", "-1", "--format=%h", "--", *READ)
    folder = str((BENCH / "records").relative_to(HERE.parent))
    if not last:
        return "", set()
    earlier = set(_git("ls-tree", "-r", "--name-only", last, "--", folder).split())
    return last, {
        _key(record.dataset, record.defenses)
        for path, record in by_path.items()
        if str(path.resolve().relative_to(HERE.parent)) not in earlier
    }


def score_markdown(
    document: dict,
    records: Sequence[CompositionRecord],
    held_out: tuple[str, set[str]] = ("", set()),
) -> str:
    """RESULTS.md: each technique scored with the labels frozen in predictions.json, then
    today's techniques post hoc (and on the labels that entered git after their last change)."""
    catalog = builtin_catalog()
    predicted = {
        _key(e["dataset"], e["defenses"]): e["predicted"] for e in document["combinations"]
    }
    planned = set(predicted)
    mine = [r for r in records if _key(r.dataset, r.defenses) in planned]
    frozen = [_frozen(r, predicted) for r in mine]
    techniques = document["techniques"]
    commits = _git("log", "--format=%h %ad %s", "--date=iso", "--", str(PREDICTIONS)).splitlines()
    landed = commits[-1].split()[0] if commits else ""
    # What the techniques read (specs, vocabulary, checker) changed since the file landed?
    changed = _git("diff", "--name-only", landed, "HEAD", "--", *READ).split() if landed else []
    drifted = [
        name
        for name, digest in document["declarations"].items()
        if document.get("hashing") == "canonical" and name in catalog
        and spec_hash(catalog[name]) != digest
    ]  # fmt: skip
    counts: dict[str, int] = {}
    for record in mine:
        counts[record.label] = counts.get(record.label, 0) + 1
    lines = [
        "# Prospective scores: techniques on defenses they were not shaped on",
        "",
        f"New defenses: {', '.join(document['new_defenses'])}. Predictions written "
        f"{document['written']} by code `{document['code'][:7]}` into `predictions.json`, "
        "before any combination involving a new defense was measured.",
        "",
        "Commits that touched predictions.json (oldest last): "
        + ("; ".join(f"`{c}`" for c in commits) if commits else "none found (not in git yet)"),
        "",
        "Files the techniques read (spec files, vocabulary, checker) changed since then: "
        + (", ".join(f"`{name}`" for name in changed) if changed else "none")
        + (f"; declarations whose hash differs: {', '.join(drifted)}" if drifted else "")
        + ".",
        "",
        f"Measured {len(mine)} of {len(planned)} predicted combinations: "
        + ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
        + ". Only conclusive labels (effective / ineffective) score a technique.",
        "",
        "## Scores with the frozen predictions",
        "",
        *_score_rows(frozen, techniques),
        "",
        "'ineffective' (a conflict) is the positive class: a missed conflict is a measured "
        "conflict predicted effective; a false alarm is a measured effective combination "
        "predicted as a conflict.",
        "",
        "## Every combination",
        "",
        "| dataset | combination | measured | " + " | ".join(techniques) + " |",
        "|" + "---|" * (3 + len(techniques)),
    ]
    by_key = {_key(r.dataset, r.defenses): r for r in mine}
    for entry in document["combinations"]:
        key = _key(entry["dataset"], entry["defenses"])
        record = by_key.get(key)
        measured = record.label if record else "not measured"
        marks = [
            entry["predicted"][t] + ("" if not record or not record.conclusive or
                                     entry["predicted"][t] == record.label else " ✗")
            for t in techniques
        ]  # fmt: skip
        lines.append(
            f"| {entry['dataset']} | {' + '.join(entry['defenses'])} | {measured} | "
            + " | ".join(marks)
            + " |"
        )
    lines += [
        "",
        "✗: the prediction disagrees with a conclusive measurement. Per-combination evidence "
        "(each defense's metric with no defense, alone and combined, per seed) is in the records "
        "under `bench/records/`; `bench/RESULTS.md` summarises them once the measuring run ends.",
        "",
        "## Post hoc, not prospective: the techniques as they are now, on the same labels",
        "",
        "Every technique re-run by the current code on the measured combinations above. Rules "
        "or declarations changed after these labels were seen are not tested by this table; "
        "only the frozen scores above are prospective.",
        "",
        *_score_rows([repredicted(r) for r in mine], techniques),
        "",
        *_held_out_rows(held_out, mine, techniques),
        "Produced by `python benchmarks/prospective.py score`.",
        "",
    ]
    return "\n".join(lines)


def _held_out_rows(
    held_out: tuple[str, set[str]], mine: Sequence[CompositionRecord], techniques: Sequence[str]
) -> list[str]:
    last, keys = held_out
    later = [repredicted(r) for r in mine if _key(r.dataset, r.defenses) in keys]
    if not last or not later:
        return []
    return [
        f"Of these, the {len(later)} combinations whose records entered git after `{last}`, "
        "the last commit that changed what the techniques read: today's techniques were not "
        "shaped on their labels.",
        "",
        *_score_rows(later, techniques),
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("predict", help="write predictions.json (once)")
    p.add_argument("--new", required=True, help="comma-separated names of the new defenses")
    p.add_argument("--datasets", default=",".join(DATASETS))
    m = sub.add_parser("measure", help="measure the predicted combinations")
    m.add_argument("--workers", type=int, default=2)
    m.add_argument("--seeds", type=int, default=3)
    m.add_argument("--max-seeds", type=int, default=5)
    m.add_argument("--cache", default=str(HERE.parent / ".defcon-cache"))
    sub.add_parser("score", help="write RESULTS.md from predictions.json and the measurements")
    args = parser.parse_args(argv)
    os.environ.setdefault("DEFCON_PROGRESS", "0")
    if args.step == "predict":
        document = predict(args.new.split(","), args.datasets.split(","), PREDICTIONS)
        print(f"wrote {len(document['combinations'])} combinations to {PREDICTIONS}")
        return 0
    if not PREDICTIONS.exists():
        raise DefconError(f"{PREDICTIONS} is missing; run the predict step and commit it first")
    document = json.loads(PREDICTIONS.read_text())
    if args.step == "measure":
        started = time.perf_counter()
        measure(document, args.workers, args.seeds, args.max_seeds, args.cache)
        print(f"measured in {time.perf_counter() - started:.0f} s")
        return 0
    by_path = {p: load_record(p) for p in sorted((BENCH / "records").rglob("*.json"))}
    text = score_markdown(document, list(by_path.values()), held_out_keys(by_path))
    atomic_write_text(OUT / "RESULTS.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    run_script(main)
