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

Round 2 is pre-registered in git: the triples are drawn by a seeded rule, the predictions are
committed, and the commit is tagged `prospective-2` before any of its combinations is measured:

    python benchmarks/prospective.py triples --round 2   # prospective2_triples.toml; commit it
    python benchmarks/prospective.py predict --round 2   # results/prospective2/predictions.json
    git tag prospective-2                                # the pre-registration
    python benchmarks/prospective.py measure --round 2   # in the checker's order, then
                                                         # every order of a stage (orders/)
    python benchmarks/prospective.py score --round 2     # refuses if a FROZEN file changed
                                                         # before its last record

`pilot` is a quick measurement, not a prediction: it is listed apart, never predicted here.
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
from typing import Any, NamedTuple

import numpy as np

from defcon.bench.run import BenchResult, combinations_for, load_triples, run_bench
from defcon.catalog import Catalog, builtin_catalog
from defcon.checker import TECHNIQUES, FactorChain, check
from defcon.cli.main import run_script
from defcon.errors import DefconError
from defcon.planning.orders import given_order
from defcon.planning.records import CompositionRecord, repredicted
from defcon.report.reports import load_record
from defcon.report.scoring import (
    BOOTSTRAP_SEED,
    LABELS,
    RESAMPLES,
    TechniqueScore,
    balanced_accuracy,
    interval_text,
    score,
    score_text,
)
from defcon.storage import atomic_write_json, atomic_write_text
from defcon.vocabulary import DefenseSpec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the repository whose tag and files round 2 is checked against
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
    later = {"reads": False, "data_kinds": None, "scope_reason": "", "contested": ""}
    for field in ("moves", "depends_on"):  # fields that came later: unset, they hash as before
        for claim in dumped.get(field, []):
            for name, default in later.items():
                if name in claim and claim[name] == default:
                    del claim[name]
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


def predicted_by_dataset(document: dict) -> dict[str, list[tuple[str, ...]]]:
    """Per dataset, the combinations the document predicts there (sorted)."""
    found: dict[str, set[tuple[str, ...]]] = {}
    for entry in document["combinations"]:
        found.setdefault(entry["dataset"], set()).add(tuple(entry["defenses"]))
    return {dataset: sorted(names) for dataset, names in found.items()}


def bench_each_dataset(
    combinations: Mapping[str, Sequence[tuple[str, ...]]], out: Path, **options: Any
) -> list[BenchResult]:
    """run_bench on each dataset with its own combinations only (a triple drawn for one dataset
    is never measured on another where it also applies); `options` go to every call."""
    return [
        run_bench(
            [dataset],
            pairs=[names for names in combos if len(names) == 2],
            triples=[names for names in combos if len(names) == 3],
            out=out,
            **options,
        )
        for dataset, combos in sorted(combinations.items())
    ]


def measure(
    document: dict, workers: int, seeds: int, max_seeds: int, cache: str, out: Path = BENCH
) -> None:
    """Measure exactly the predicted combinations (bench semantics: resumable, cached), dataset
    by dataset, then every order of each same-stage group (records named `-given`, in orders/)."""
    options = {
        "seeds": seeds, "max_seeds": max_seeds, "workers": workers, "cache_dir": cache,
        "log": lambda message: print(message, flush=True),
    }  # fmt: skip
    bench_each_dataset(predicted_by_dataset(document), out, **options)
    write_report(document, seeds, max_seeds, cache, out, workers)
    bench_each_dataset(given_orders(document), out / "orders", order="given", **options)


def write_report(
    document: dict, seeds: int, max_seeds: int, cache: str, out: Path, workers: int = 1
) -> None:
    """The bench's per-combination report (RESULTS.md, scores.json) of the records in `out`,
    with each dataset's pending and skipped counts taken over its own predicted combinations."""
    from defcon.bench.results import write_results

    parts = bench_each_dataset(
        predicted_by_dataset(document), out, seeds=seeds, max_seeds=max_seeds, workers=workers,
        cache_dir=cache, measure=False, log=lambda message: None,
    )  # fmt: skip
    merged = parts[0].model_copy(  # every part loaded all of out's records
        update={
            "skipped": [item for part in parts for item in part.skipped],
            "failed": [item for part in parts for item in part.failed],
            "pending": sum(part.pending for part in parts),
        }
    )
    write_results(merged, out)


def given_orders(document: dict) -> dict[str, list[tuple[str, ...]]]:
    """Per dataset, every combination of the document's order groups in each order of its
    same-stage defenses (stages pre → in → post, the other stages' defenses as they are)."""
    catalog = builtin_catalog()
    found: dict[str, list[tuple[str, ...]]] = {}
    for item in document.get("orders", []):
        for order in item["orders"]:
            others = [name for name in item["defenses"] if name not in order]
            names = given_order(catalog, [*order, *others])
            if names not in found.setdefault(item["dataset"], []):
                found[item["dataset"]].append(names)
    return found


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


# --- round 2: pre-registered in git (tag prospective-2) --------------------------------------

ROUND2 = HERE / "results" / "prospective2"
PREDICTIONS2 = ROUND2 / "predictions.json"
BENCH2 = ROUND2 / "bench"
TRIPLES2 = HERE / "prospective2_triples.toml"
TAG2 = "prospective-2"
NEW2 = (
    "activation_clustering",
    "adversarial_debiasing",
    "confidence_masking",
    "distillation_privacy",
    "fine_pruning",
    "ipguard_fingerprint",
)
TRIPLES_PER_DATASET = 16
TRIPLES_SEED = 2
TRIPLES_RULE = (
    "per dataset, every triple of three distinct runnable defenses that all apply to the dataset "
    "(declared data kinds, sensitive attribute, declared not-applicable kinds), include at least "
    "one new defense and can share a training loop, sorted by name; "
    f"{TRIPLES_PER_DATASET} drawn without replacement by random.Random({TRIPLES_SEED} + the "
    "dataset's index in (fmnist, adult)).sample. No measured label is read."
)
FROZEN = (
    "defcon/checker",
    "defcon/vocabulary.py",
    "defcon/catalog.py",
    "defcon/effectiveness.py",
    "pipeline_stages/*/*.toml",
    str(PREDICTIONS2.relative_to(HERE.parent)),
    str(TRIPLES2.relative_to(HERE.parent)),
)
"""What the techniques and the verdict rule read, and what round 2 pre-registers: `score
--round 2` refuses if any of it differed from the tag prospective-2 when a record entered git
(the last two, read by the score step, must stay as tagged for good)."""
PILOT_APART = (
    "pilot is a quick measurement on a small slice of the dataset, not a prediction from the "
    "declarations: it is listed apart and never scored here"
)


def _applies(dataset: str, names: Sequence[str], catalog: Mapping[str, DefenseSpec]) -> str:
    """Why the combination cannot run on `dataset` (empty: it can), from the declarations and
    the dataset's facts, without loading the data."""
    from defcon.planning.evidence import builtin_facts
    from defcon.planning.rules import applicability_problem

    facts = builtin_facts(dataset)
    problems = [applicability_problem(catalog[name], facts) for name in names]
    problems += [f"'{n}' has no mechanism yet" for n in names if catalog[n].implementation is None]
    found = [problem for problem in problems if problem]
    if not found and not check(list(names), catalog=catalog).composable:
        found.append("its in-training defenses cannot share one training loop")
    return "; ".join(found)


def draw_triples(
    catalog: Mapping[str, DefenseSpec], datasets: Sequence[str] = DATASETS
) -> dict[tuple[str, ...], list[str]]:
    """The seeded draw of TRIPLES_RULE: triple → the datasets it was drawn for."""
    import random

    drawn: dict[tuple[str, ...], list[str]] = {}
    for index, dataset in enumerate(datasets):
        candidates = [
            names
            for names in itertools.combinations(sorted(catalog), 3)
            if set(names) & set(NEW2) and not _applies(dataset, names, catalog)
        ]
        rng = random.Random(TRIPLES_SEED + index)
        for names in sorted(rng.sample(candidates, min(TRIPLES_PER_DATASET, len(candidates)))):
            drawn.setdefault(names, []).append(dataset)
    return drawn


def write_triples(path: Path) -> int:
    """Write the seeded draw to `path` (once: it is committed before the predictions)."""
    if path.exists():
        raise DefconError(f"{path} exists; the round-2 triples are drawn once and committed")
    drawn = draw_triples(builtin_catalog())
    lines = [
        "# Round 2 of the prospective evaluation: the three-defense combinations, drawn by",
        "# `python benchmarks/prospective.py triples --round 2` with this rule:",
        *(f"# {line}" for line in _wrapped(TRIPLES_RULE)),
        "",
    ]
    for names, datasets in sorted(drawn.items()):
        lines += [
            "[[triple]]",
            f"defenses = [{', '.join(json.dumps(n) for n in names)}]",
            f"datasets = [{', '.join(json.dumps(d) for d in datasets)}]",
            "",
        ]
    atomic_write_text(path, "\n".join(lines))
    return len(drawn)


def _wrapped(text: str, width: int = 96) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def load_round2_triples(path: Path, catalog: Catalog) -> dict[str, list[tuple[str, ...]]]:
    """dataset → its triples, from the committed file (names checked against the catalog)."""
    import tomllib

    load_triples(path, catalog)  # names and shape checked, one error line on a bad file
    by_dataset: dict[str, list[tuple[str, ...]]] = {}
    for entry in tomllib.loads(path.read_text())["triple"]:
        for dataset in entry.get("datasets", list(DATASETS)):
            by_dataset.setdefault(dataset, []).append(tuple(sorted(entry["defenses"])))
    return by_dataset


def _chain_dict(chain: FactorChain) -> dict[str, str]:
    return {
        "mover": chain.mover,
        "factor": chain.factor.value,
        "moved": chain.moved.value,
        "dependent": chain.dependent,
        "needed": chain.needed.value,
    }


def _entry(dataset: str, names: tuple[str, ...], catalog: Catalog) -> dict:
    from defcon.planning.evidence import builtin_facts

    kind = builtin_facts(dataset).kind.value
    verdicts = {
        t: check(list(names), technique=t, catalog=catalog, data_kind=kind)
        for t in sorted(TECHNIQUES)
    }
    return {
        "dataset": dataset,
        "data_kind": kind,
        "defenses": list(names),
        "size": len(names),
        "predicted": {t: v.label for t, v in verdicts.items()},
        "confidence": {t: v.confidence for t, v in verdicts.items()},
        "uncertain": {t: v.uncertain for t, v in verdicts.items()},
        "order": {t: list(v.order) for t, v in verdicts.items()},
        "chains": {t: [_chain_dict(c) for c in v.factor_chains] for t, v in verdicts.items()},
        "explanation": {t: v.explanation for t, v in verdicts.items()},
    }


def _order_items(entry: dict, catalog: Catalog) -> list[dict]:
    """Every stage of the combination with two or more defenses: all its orders, and each
    technique's proposed order of that stage."""
    items = []
    for stage in ("pre", "in", "post"):
        members = sorted(n for n in entry["defenses"] if catalog[n].stage.value == stage)
        if len(members) < 2:
            continue
        items.append(
            {
                "dataset": entry["dataset"],
                "defenses": entry["defenses"],
                "stage": stage,
                "orders": [list(p) for p in itertools.permutations(members)],
                "proposed": {
                    t: [n for n in order if n in members] for t, order in entry["order"].items()
                },
            }
        )
    return items


def predict_round2(out: Path, triples_path: Path = TRIPLES2) -> dict:
    """The round-2 pre-registration: every pair involving a new defense and the committed
    triples, on each dataset where they apply, with every predicting technique's label,
    confidence, abstention, order and factor chains, and every same-stage order to measure."""
    if out.exists():
        raise DefconError(
            f"{out} exists; pre-registered predictions are written once and never edited"
        )
    catalog = builtin_catalog()
    catalog.resolve(NEW2, minimum=1)
    triples = load_round2_triples(triples_path, catalog)
    pairs = sorted({tuple(sorted((n, o))) for n in NEW2 for o in catalog if o != n})
    entries, orders, skipped = [], [], []
    for dataset in DATASETS:
        for names in [*pairs, *sorted(triples.get(dataset, []))]:
            reason = _applies(dataset, names, catalog)
            if reason:
                if len(names) == 3:
                    raise DefconError(
                        f"{triples_path}: {'+'.join(names)} cannot run on {dataset} ({reason})"
                    )
                skipped.append({"dataset": dataset, "defenses": list(names), "reason": reason})
                continue
            entry = _entry(dataset, names, catalog)
            entries.append(entry)
            orders += _order_items(entry, catalog)
    document = {
        "round": 2,
        "tag": TAG2,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": _git("rev-parse", "HEAD"),
        "hashing": "canonical",
        "new_defenses": list(NEW2),
        "techniques": sorted(TECHNIQUES),
        "not_predicting": {"pilot": PILOT_APART},
        "triples_rule": TRIPLES_RULE,
        "frozen_paths": list(FROZEN),
        "declarations": {name: spec_hash(catalog[name]) for name in sorted(catalog)},
        "combinations": entries,
        "orders": orders,
        "skipped": skipped,
    }
    atomic_write_json(out, document)
    return document


READ_AT_SCORE = FROZEN[-2:]
"""The frozen files the score step itself reads: as tagged at HEAD and in the tree, always."""
RECORDS2 = tuple(
    str(folder.relative_to(HERE.parent)) for folder in (BENCH2 / "records", BENCH2 / "orders")
)
"""Round 2's records (and its order records): each must have entered git while every frozen file
was as tagged. The bench's own report beside them may be rebuilt later."""


class Freeze(NamedTuple):
    """A pre-registration: its tag, the files it froze, those the score step reads, its records."""

    tag: str = TAG2
    paths: tuple[str, ...] = FROZEN
    read: tuple[str, ...] = READ_AT_SCORE
    records: tuple[str, ...] = RECORDS2


def frozen_changes(root: Path, freeze: Freeze = Freeze()) -> list[str]:
    """The pre-registered files that make the round unscorable: those the score step reads
    changed since the tag, and the others changed since the tag at any commit that added or
    changed one of its records (or in the tree while records are uncommitted). The
    labels are in the records, made by the code of their commit: a technique or spec changed
    after the last record entered git cannot have shaped a prediction or a label, so it may
    change then. Raises DefconError when the tag does not exist."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            raise DefconError(
                f"git {' '.join(args[:2])} failed in {root}: {done.stderr.strip()[:200]}"
            )
        return done.stdout

    tag, paths, read, records = freeze
    missing = subprocess.run(
        ["git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}"], cwd=root, capture_output=True
    )
    if missing.returncode != 0:
        raise DefconError(
            f"tag {tag} does not exist in {root}; round 2 is scored only against the commit "
            "tagged when the predictions were pre-registered"
        )

    def changed_at(*revisions: str, among: Sequence[str]) -> set[str]:
        return set(git("diff", "--name-only", tag, *revisions, "--", *among).split())

    def changed_in_tree(among: Sequence[str]) -> set[str]:
        untracked = git("ls-files", "--others", "--exclude-standard", "--", *among).split()
        return changed_at(among=among) | set(untracked)

    changed = changed_at("HEAD", among=read) | changed_in_tree(read)
    for commit in git("log", "--format=%H", f"{tag}..HEAD", "--", *records).split():
        changed |= changed_at(commit, among=paths)
    if git("status", "--porcelain", "--", *records).strip():
        changed |= changed_in_tree(paths)
    return sorted(changed)


def refuse_if_changed(root: Path, freeze: Freeze = Freeze()) -> None:
    """Exit 2 (one `error:` line naming the files) unless the pre-registered files were as
    tagged whenever a record of the round entered git, and the files scored are as tagged."""
    changed = frozen_changes(root, freeze)
    if changed:
        raise DefconError(
            f"round 2 cannot be scored: {', '.join(changed)} changed since tag {freeze.tag} "
            "while its records were being made, or are read by the score step (the techniques, the "
            "verdict rule and the pre-registered lists must be as tagged until the last record "
            "enters git; restore them, or pre-register a new round)"
        )


# --- round 2: the analysis fixed in advance ---------------------------------------------------


def weighted_balanced_accuracy(
    measured: Sequence[str], predicted: Sequence[str], weights: Sequence[float]
) -> float | None:
    """Mean over the measured classes with positive weight of the weighted recall."""
    recalls = []
    for label in LABELS:
        total = sum(w for m, w in zip(measured, weights, strict=True) if m == label)
        if total > 0:
            right = sum(
                w
                for m, p, w in zip(measured, predicted, weights, strict=True)
                if m == label and p == label
            )
            recalls.append(right / total)
    return sum(recalls) / len(recalls) if recalls else None


def clustered_interval(
    measured: Sequence[str],
    predicted: Sequence[str],
    clusters: Sequence[Sequence[str]],
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the balanced accuracy, resampling defenses: each
    resample draws the defenses with replacement, and a combination enters with weight the
    product of how often each of its defenses was drawn (a combination shares the fate of its
    defenses, so combinations of one defense are not counted as independent evidence)."""
    if not measured:
        return None
    defenses = sorted({name for names in clusters for name in names})
    index = {name: i for i, name in enumerate(defenses)}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, len(defenses), len(defenses)), minlength=len(defenses))
        weights = [float(np.prod([counts[index[n]] for n in names])) for names in clusters]
        value = weighted_balanced_accuracy(measured, predicted, weights)
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    lower, upper = np.percentile(values, [tail, 100 - tail])
    return float(lower), float(upper)


def mcnemar(
    measured: Sequence[str], first: Sequence[str], second: Sequence[str]
) -> tuple[int, int, float]:
    """(first right where second is wrong, the reverse, exact two-sided p): the binomial test
    of the discordant pairs against one half."""
    from scipy.stats import binomtest

    only_first = sum(f == m != s for m, f, s in zip(measured, first, second, strict=True))
    only_second = sum(s == m != f for m, f, s in zip(measured, first, second, strict=True))
    discordant = only_first + only_second
    p = binomtest(only_first, discordant, 0.5).pvalue if discordant else 1.0
    return only_first, only_second, float(p)


def chain_moves(
    entries: Sequence[dict], records: Sequence[CompositionRecord], technique: str = "factors"
) -> list[dict]:
    """For every predicted factor chain (dataset, mover, factor, arrow), whether the mover alone
    moved the factor as declared on that dataset, from the records' factor probes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("factor_shift", HERE / "factor_shift.py")
    assert spec is not None and spec.loader is not None
    shift_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shift_module)
    from defcon.engine.probes import PROBES

    probe_of = {factor: probe for probe, factor in PROBES.items()}
    shifts = shift_module.paired_shifts(list(records))
    seen: dict[tuple[str, str, str, str], dict] = {}
    for entry in entries:
        for chain in entry.get("chains", {}).get(technique, []):
            key = (entry["dataset"], chain["mover"], chain["factor"], chain["moved"])
            if key in seen:
                continue
            row = {"dataset": key[0], "mover": key[1], "factor": key[2], "declared": key[3]}
            probe = probe_of.get(chain["factor"])
            by_probe = shift_module.defense_shifts(shifts, key[0], key[1])
            if probe is None:
                row["as_declared"] = "not probed (a fact of the pipeline or no probe)"
            elif probe not in by_probe:
                row["as_declared"] = "no measurement"
            else:
                mean, lower, upper, seeds, arrow = shift_module.probe_shift(by_probe, probe)
                row["measured"] = f"{mean:+.4g} [{lower:+.3g}, {upper:+.3g}] ({seeds} seeds)"
                wanted = "↑" if chain["moved"] == "up" else "↓"
                row["as_declared"] = (
                    "no significant shift" if arrow == "–" else "yes" if arrow == wanted else "no"
                )
            seen[key] = row
    return list(seen.values())


def better_order(first: CompositionRecord, second: CompositionRecord) -> tuple[str, ...] | None:
    """The measured better of two orders of the same combination: the one that stays effective
    where the other does not; None when they agree or either is inconclusive."""
    if not (first.conclusive and second.conclusive) or first.label == second.label:
        return None
    return first.order if first.label == "effective" else second.order


def _measured_so_far(
    document: dict, by_key: Mapping[str, Sequence[CompositionRecord]]
) -> list[str]:
    """Per dataset: how many predicted combinations have a record, by label, and how many not
    yet (a partial measurement is scored as such, never as the whole round)."""
    lines = ["| dataset | predicted | measured | effective | ineffective | inconclusive | "
             "not effective alone | of these unreliable (not scored) | not measured yet |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for dataset in DATASETS:
        entries = [e for e in document["combinations"] if e["dataset"] == dataset]
        found = [by_key[k][0] for e in entries if (k := _key(dataset, e["defenses"])) in by_key]
        labels = [record.label for record in found]
        counts = [labels.count(label) for label in (*LABELS, "inconclusive", "not_effective_alone")]
        unreliable = sum(bool(record.unreliable) for record in found)
        lines.append(
            f"| {dataset} | {len(entries)} | {len(found)} | {' | '.join(map(str, counts))} | "
            f"{unreliable} | {len(entries) - len(found)} |"
        )
    return lines


def analysis_markdown(
    document: dict,
    records: Sequence[CompositionRecord],
    order_records: Sequence[CompositionRecord] = (),
) -> str:
    """The pre-registered round-2 table: per technique balanced accuracy with the interval
    clustered by defense, coverage and the accuracy where it decides, McNemar against naive and
    Def\\Con, whether each predicted chain's factor moved as declared, and the order table
    (which also reads `order_records`: the stages' other orders, measured as given)."""
    techniques = document["techniques"]
    by_key: dict[str, list[CompositionRecord]] = {}
    for record in records:
        by_key.setdefault(_key(record.dataset, record.defenses), []).append(record)
    scored = []  # (entry, record): the conclusive measurement in the listed order
    for entry in document["combinations"]:
        found = [
            r for r in by_key.get(_key(entry["dataset"], entry["defenses"]), []) if r.conclusive
        ]
        if found:
            scored.append((entry, found[0]))
    measured = [record.label for _, record in scored]
    clusters = [entry["defenses"] for entry, _ in scored]
    conflicts = measured.count("ineffective")
    lines = [
        "# Round 2 (pre-registered at tag prospective-2): the analysis fixed in advance",
        "",
        f"{len(document['combinations'])} combinations predicted; {len(scored)} measured "
        f"conclusively ({conflicts} conflicts). {document['not_predicting']['pilot']}.",
        "",
        *_measured_so_far(document, by_key),
        "",
        "| technique | n | balanced accuracy [95 % CI, clustered by defense] | coverage | "
        "decided n | balanced accuracy where it decides [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for technique in techniques:
        guess = [entry["predicted"][technique] for entry, _ in scored]
        decided = [i for i, (entry, _) in enumerate(scored) if not entry["uncertain"][technique]]
        d_measured = [measured[i] for i in decided]
        d_guess = [guess[i] for i in decided]
        d_clusters = [clusters[i] for i in decided]
        coverage = len(decided) / len(scored) if scored else None
        lines.append(
            f"| {technique} | {len(scored)} | "
            f"{score_text(balanced_accuracy(measured, guess))}"
            f"{interval_text(clustered_interval(measured, guess, clusters))} | "
            f"{score_text(coverage)} | {len(decided)} | "
            f"{score_text(balanced_accuracy(d_measured, d_guess))}"
            f"{interval_text(clustered_interval(d_measured, d_guess, d_clusters))} |"
        )
    lines += [
        "",
        "McNemar (exact binomial on the discordant combinations; every technique's label, its "
        "lean where it abstains):",
        "",
        "| technique | against | right only here | right only there | p |",
        "|---|---|---|---|---|",
    ]
    for technique in techniques:
        for baseline in ("naive", "defcon"):
            if technique == baseline or baseline not in techniques:
                continue
            first = [entry["predicted"][technique] for entry, _ in scored]
            second = [entry["predicted"][baseline] for entry, _ in scored]
            a, b, p = mcnemar(measured, first, second)
            lines.append(f"| {technique} | {baseline} | {a} | {b} | {p:.3g} |")
    moves = chain_moves([entry for entry, _ in scored], records)
    lines += [
        "",
        "Every factor chain `factors` predicted on a measured combination: did the mover, alone, "
        "move the factor as declared on that dataset (factor probes, paired per seed, "
        "benchmarks/factor_shift.py)?",
        "",
        "| dataset | mover | factor | declared | measured shift | as declared |",
        "|---|---|---|---|---|---|",
        *(
            f"| {m['dataset']} | {m['mover']} | {m['factor']} | "
            f"{'↑' if m['declared'] == 'up' else '↓'} | {m.get('measured', '—')} | "
            f"{m['as_declared']} |"
            for m in moves
        ),
        "",
        *order_rows(document, [*records, *order_records]),
        "",
        "Produced by `python benchmarks/prospective.py score --round 2`.",
        "",
    ]
    return "\n".join(lines)


def order_rows(document: dict, records: Sequence[CompositionRecord]) -> list[str]:
    """Each same-stage pair measured in both orders: the better order, and whether each
    technique proposed it (a tie, or an inconclusive order, is not scored)."""
    techniques = document["techniques"]
    by_order = {(r.dataset, tuple(r.order)): r for r in records}
    lines = [
        "Order within a stage: the measured better order (effective where the other is not) "
        "against each technique's proposed order.",
        "",
        "| dataset | combination | stage | better order | " + " | ".join(techniques) + " |",
        "|" + "---|" * (4 + len(techniques)),
    ]
    for item in document.get("orders", []):
        if len(item["orders"]) != 2:
            continue
        found = []
        for stage_order in item["orders"]:
            full = _full_order(item, stage_order, by_order)
            found.append(by_order.get((item["dataset"], full)) if full else None)
        if None in found:
            continue
        better = better_order(found[0], found[1])
        if better is None:
            cells = ["not scored"] * len(techniques)
            shown = "no difference (or inconclusive)"
        else:
            stage_better = [n for n in better if n in item["orders"][0]]
            shown = " → ".join(stage_better)
            cells = ["yes" if item["proposed"][t] == stage_better else "no" for t in techniques]
        lines.append(
            f"| {item['dataset']} | {' + '.join(item['defenses'])} | {item['stage']} | {shown} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _full_order(
    item: dict, stage_order: Sequence[str], by_order: Mapping[tuple[str, tuple[str, ...]], object]
) -> tuple[str, ...] | None:
    """The measured record's full order whose stage `item['stage']` is in `stage_order`."""
    for dataset, order in by_order:
        if (
            dataset == item["dataset"]
            and sorted(order) == sorted(item["defenses"])
            and [n for n in order if n in stage_order] == list(stage_order)
        ):
            return order
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("predict", help="write predictions.json (once)")
    p.add_argument("--new", help="round 1: comma-separated names of the new defenses")
    p.add_argument("--datasets", default=",".join(DATASETS))
    t = sub.add_parser("triples", help="round 2: draw the triples (seeded) into their TOML, once")
    m = sub.add_parser("measure", help="measure the predicted combinations")
    m.add_argument("--workers", type=int, default=2)
    m.add_argument("--seeds", type=int, default=3)
    m.add_argument("--max-seeds", type=int, default=5)
    m.add_argument("--cache", default=str(HERE.parent / ".defcon-cache"))
    s = sub.add_parser("score", help="write RESULTS.md from predictions.json and the measurements")
    for command in (p, t, m, s):
        command.add_argument("--round", type=int, choices=(1, 2), default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("DEFCON_PROGRESS", "0")
    if args.step == "triples":
        if args.round != 2:
            raise DefconError("the triples step draws round 2's triples; give --round 2")
        count = write_triples(TRIPLES2)
        print(f"wrote {count} triples to {TRIPLES2}")
        return 0
    if args.step == "predict" and args.round == 2:
        document = predict_round2(PREDICTIONS2)
        print(_round2_summary(document))
        return 0
    if args.step == "predict":
        if not args.new:
            raise DefconError("round 1's predict step needs --new a,b,c (round 2: --round 2)")
        document = predict(args.new.split(","), args.datasets.split(","), PREDICTIONS)
        print(f"wrote {len(document['combinations'])} combinations to {PREDICTIONS}")
        return 0
    if args.step == "score" and args.round == 2:
        refuse_if_changed(ROOT)  # before anything is read
    predictions = PREDICTIONS2 if args.round == 2 else PREDICTIONS
    if not predictions.exists():
        raise DefconError(f"{predictions} is missing; run the predict step and commit it first")
    document = json.loads(predictions.read_text())
    if args.step == "measure":
        started = time.perf_counter()
        out = BENCH2 if args.round == 2 else BENCH
        measure(document, args.workers, args.seeds, args.max_seeds, args.cache, out)
        print(f"measured in {time.perf_counter() - started:.0f} s")
        return 0
    if args.round == 2:
        found = [load_record(p) for p in sorted((BENCH2 / "records").rglob("*.json"))]
        orders = [load_record(p) for p in sorted((BENCH2 / "orders" / "records").rglob("*.json"))]
        text = analysis_markdown(document, found, orders)
        atomic_write_text(ROUND2 / "RESULTS.md", text)
        print(text)
        return 0
    by_path = {p: load_record(p) for p in sorted((BENCH / "records").rglob("*.json"))}
    text = score_markdown(document, list(by_path.values()), held_out_keys(by_path))
    atomic_write_text(OUT / "RESULTS.md", text)
    print(text)
    return 0


def _round2_summary(document: dict) -> str:
    """Counts per dataset and size, and each technique's labels and abstention rate."""
    entries = document["combinations"]
    lines = [f"wrote {len(entries)} combinations to {PREDICTIONS2}"]
    for dataset in DATASETS:
        mine = [e for e in entries if e["dataset"] == dataset]
        pairs = sum(e["size"] == 2 for e in mine)
        orders = sum(o["dataset"] == dataset for o in document["orders"])
        lines.append(
            f"  {dataset}: {len(mine)} combinations ({pairs} pairs, {len(mine) - pairs} triples),"
            f" {orders} same-stage groups measured in every order"
        )
    for technique in document["techniques"]:
        labels = [e["predicted"][technique] for e in entries]
        abstained = sum(e["uncertain"][technique] for e in entries)
        lines.append(
            f"  {technique}: {labels.count('ineffective')} ineffective, "
            f"{labels.count('effective')} effective; uncertain {abstained} "
            f"({abstained / max(len(entries), 1):.0%})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
