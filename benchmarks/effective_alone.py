"""Is every catalog defense effective alone, by a margin? (issue 21: gain ≥ 2 × tolerance)

For each defense × dataset: the defense alone vs no defense over seeds (`measure_standalone`, the
composer's arms and cache), each judged metric's paired gain from `defcon.effectiveness.judge`
(the verdict rule's own gate, not a re-implementation). A metric passes when the mean gain is at
least twice its declared tolerance and the lower bound of the gain's confidence interval is above
the tolerance; a defense passes when one of its judged metrics does. Defenses the spec declares
not applicable to the data kind are listed as such and never trained.

`--append-to FOLDER` (the committed table is `benchmarks/results/effective_alone`) adds this
run's rows to FOLDER's table.json and its block, headed by the commit and the command, to
table.md before its status section, once every defense has run; the status section stays a
reader's judgement, so the script says to update it. It refuses a working tree with changes to
tracked files: a block names the commit that produced it.

With `--max-seeds`, seeds are added up to each next look (`defcon.effectiveness.looks`, as the
benchmark adds them while a verdict is inconclusive, each look at the per-look confidence) while no
judged metric passes yet one still could: its gain's upper bound reaches the margin. The same
stopping rule for every defense, so no defense gets seeds until it passes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from defcon.bench.provenance import source_commit
from defcon.catalog import builtin_catalog
from defcon.effectiveness import MetricVerdict, judge
from defcon.engine.defense_settings import parse_assignments, validated
from defcon.errors import DefconError
from defcon.measure.composer import Composer, applicability_problem
from defcon.measure.standalone import StandaloneResult, measure_standalone
from defcon.storage import atomic_write_text
from defcon.vocabulary import DefenseSpec

ROOT = Path(__file__).resolve().parent
MARGIN = 2.0  # the mean gain must be at least this many tolerances


class Row(BaseModel):
    """One judged metric of one defense on one dataset (or why it was not measured)."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    defense: str
    metric: str | None = None
    no_defense: str = ""
    alone: str = ""
    gain: float | None = None
    gain_lower: float | None = None
    gain_upper: float | None = None
    tolerance: float | None = None
    ratio: float | None = None
    passed: bool | None = None
    not_applicable: str | None = None
    clean_accuracy: str = ""  # no defense → alone: a pass bought with accuracy shows here
    seeds: int | None = None


def passes(verdict: MetricVerdict) -> bool:
    """Mean gain ≥ MARGIN × tolerance and the gain's lower confidence bound above the tolerance.

    On top of the verdict rule's gate; a guarantee gained entirely (ε from ∞) has no finite mean.
    """
    mean, lower = verdict.gain.mean, verdict.gain.lower
    tolerance = verdict.declared_tolerance
    return bool(
        verdict.effective_alone
        and lower is not None
        and lower > tolerance
        and (mean is None or mean >= MARGIN * tolerance)
    )


def undecided(rows: list[Row]) -> bool:
    """No judged metric passes, yet one could with more seeds: its gain's upper confidence
    bound reaches MARGIN × tolerance (or is unknown)."""
    measured = [r for r in rows if r.not_applicable is None]
    if not measured or any(r.passed for r in measured):
        return False
    return any(
        r.gain_upper is None or r.tolerance is None or r.gain_upper >= MARGIN * r.tolerance
        for r in measured
    )


def rows_of(result: StandaloneResult, catalog_metrics: dict[str, object]) -> list[Row]:
    """The judged metrics of one standalone measurement, as table rows."""
    rows = []
    for name, (without, defended) in result.metrics.items():
        metric = catalog_metrics[name]
        if not metric.judged:  # type: ignore[attr-defined]
            continue
        alone, none = defended.raw(), without.raw()
        verdict = judge(
            result.defense,
            metric,  # type: ignore[arg-type]
            alone,
            alone,
            none,
            confidence=result.confidence,
        )
        gain, tolerance = verdict.gain.mean, verdict.declared_tolerance
        rows.append(
            Row(
                dataset=result.dataset,
                defense=result.defense,
                metric=name,
                no_defense=str(without),
                alone=str(defended),
                gain=gain,
                gain_lower=verdict.gain.lower,
                gain_upper=verdict.gain.upper,
                tolerance=tolerance,
                ratio=None if gain is None or tolerance == 0 else gain / tolerance,
                passed=passes(verdict),
                clean_accuracy=f"{result.clean_accuracy[0]} → {result.clean_accuracy[1]}",
                seeds=result.seeds,
            )
        )
    return rows


def standalone_rows(
    composer: Composer, spec: DefenseSpec, seeds: int, max_seeds: int, seed_start: int
) -> list[Row]:
    """`seeds` seeds, then more up to each look until `max_seeds` while `undecided`."""
    metrics = {m.name: m for m in spec.metrics}
    result = measure_standalone(
        composer, spec.name, seeds, seed_start, max_seeds=max_seeds,
        enough=lambda so_far: not undecided(rows_of(so_far, metrics)),
    )  # fmt: skip
    return rows_of(result, metrics)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def markdown(rows: list[Row], footer: str) -> str:
    """The defense × dataset table."""
    lines = [
        "# Every defense effective alone, by a margin",
        "",
        f"Pass: mean gain ≥ {MARGIN:g} × tolerance and the gain's lower bound > tolerance. The "
        "bounds are 90 % per side with no seeds added, and the look's stricter confidence where "
        "seeds were added (the verdict rule's point 4).",
        "",
        "| dataset | defense | metric | no defense | alone | gain | tolerance | ratio "
        "| gain CI | pass | clean accuracy (no defense → alone) | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.not_applicable is not None:
            lines.append(
                f"| {r.dataset} | {r.defense} | | | | | | | | "
                f"not applicable: {r.not_applicable} | | |"
            )
            continue
        ci = f"[{_number(r.gain_lower)}, {_number(r.gain_upper)}]"
        lines.append(
            f"| {r.dataset} | {r.defense} | {r.metric} | {r.no_defense} | {r.alone} | "
            f"{_number(r.gain)} | {_number(r.tolerance)} | {_number(r.ratio)} | {ci} | "
            f"{'yes' if r.passed else 'no'} | {r.clean_accuracy} | {r.seeds or ''} |"
        )
    return "\n".join(lines) + "\n\n" + footer + "\n"


STATUS_HEADING = "## Current status"


def checked_commit(root: Path) -> str:
    """The short commit of `root`'s checkout (`defcon.bench.provenance.source_commit`, which
    runs git without hooks); refuses a changed tracked file anywhere in it, as a block names the
    commit that produced it."""
    commit = source_commit(root, paths=(".",))
    if commit is None:
        raise DefconError(f"--append-to needs a git checkout at {root} and git installed")
    if commit.endswith("+dirty"):
        raise DefconError(
            "--append-to: tracked files differ from the commit, so no commit produced this "
            "block; commit or stash them first"
        )
    return commit[:7]


def append_block(
    folder: Path, rows: list[Row], command: str, commit: str, setting: str | None
) -> None:
    """Add the rows to folder/table.json (each with its commit and setting) and their block to
    folder/table.md, before the status section where there is one."""
    table_json, table_md = folder / "table.json", folder / "table.md"
    kept = json.loads(table_json.read_text()) if table_json.exists() else []
    kept += [{**r.model_dump(mode="json"), "commit": commit, "setting": setting} for r in rows]
    text = table_md.read_text() if table_md.exists() else markdown([], "").split("\n| ")[0]
    table = [line for line in markdown(rows, "").splitlines() if line.startswith("|")]
    block = f"## Commit {commit}: `{command}`\n\n" + "\n".join(table) + "\n\n"
    head, found, status = text.partition(STATUS_HEADING)
    updated = head.rstrip("\n") + "\n\n" + block + (found + status if found else "")
    atomic_write_text(table_json, json.dumps(kept, indent=2) + "\n")
    atomic_write_text(table_md, updated)


def main() -> None:
    catalog = builtin_catalog()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="adult,fmnist")
    parser.add_argument("--defenses", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--seed-start", type=int, default=0, help="first seed (a second, disjoint seed set)"
    )
    parser.add_argument(
        "--max-seeds",
        type=int,
        default=None,
        help="add seeds up to each look, at most this many, while a defense is undecided "
        "(default: --seeds, no extra seeds)",
    )
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cache", default=str(ROOT.parent / ".defcon-cache"))
    parser.add_argument("--out", default=str(ROOT / "results" / "effective_alone"))
    parser.add_argument(
        "--append-to",
        default=None,
        help="a table folder to add this run's rows and block to (the committed one: "
        "benchmarks/results/effective_alone)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME.FIELD=VALUE",
        help="a defense setting, as `defcon compose --set` takes it (repeatable)",
    )
    args = parser.parse_args()
    defenses = list(catalog)
    if args.defenses:
        unknown = sorted(set(args.defenses.split(",")) - set(defenses))
        if unknown:
            parser.error(f"--defenses: {', '.join(unknown)} not among {', '.join(defenses)}")
        defenses = [name for name in defenses if name in args.defenses.split(",")]
    if args.seeds < 2:
        parser.error("--seeds: need at least 2 seeds for a confidence interval")
    max_seeds = args.seeds if args.max_seeds is None else args.max_seeds
    if max_seeds < args.seeds:
        parser.error(f"--max-seeds ({max_seeds}) must be at least --seeds ({args.seeds})")
    try:
        configs = validated(parse_assignments(args.set), catalog)
    except DefconError as error:
        parser.error(str(error))
    commit = None
    if args.append_to and Path(args.append_to).resolve() == Path(args.out).resolve():
        parser.error("--append-to: give --out another folder (the run rewrites --out as it goes)")
    if args.append_to:
        try:
            commit = checked_commit(ROOT.parent)
        except DefconError as error:
            parser.error(str(error))
    os.environ.setdefault("DEFCON_PROGRESS", "0")
    started = time.perf_counter()
    rows: list[Row] = []
    out = Path(args.out)
    command = (
        f"python benchmarks/effective_alone.py --datasets {args.datasets} --seeds {args.seeds} "
        f"--profile {args.profile}" + (f" --defenses {args.defenses}" if args.defenses else "")
    ) + "".join(f" --set {item}" for item in args.set)
    if args.seed_start:
        command += f" --seed-start {args.seed_start}"
    if max_seeds > args.seeds:
        command += f" --max-seeds {max_seeds}"
    for dataset in args.datasets.split(","):
        composer = Composer(dataset, profile=args.profile, cache_dir=args.cache, configs=configs)
        for name in defenses:
            spec = catalog[name]
            problem = applicability_problem(spec, composer.dataset(0))
            if problem:
                rows.append(Row(dataset=dataset, defense=name, not_applicable=problem))
            else:
                rows += standalone_rows(composer, spec, args.seeds, max_seeds, args.seed_start)
            for row in rows[-len(spec.metrics) :]:
                if row.defense == name and row.dataset == dataset:
                    print(row.model_dump_json(), flush=True)
            footer = (
                f"Profile `{args.profile}`, seeds from {args.seed_start} (the `seeds` column); "
                "values mean ± std over seeds. "
                f"Wall time so far {time.perf_counter() - started:.0f} s. "
                f"Produced by `{command}`."
            )
            out.mkdir(parents=True, exist_ok=True)  # rewritten after each defense: a cut-off
            atomic_write_text(out / "table.md", markdown(rows, footer))  # keeps what ran
            atomic_write_text(
                out / "table.json",
                json.dumps([r.model_dump(mode="json") for r in rows], indent=1) + "\n",
            )
    print(markdown(rows, ""))
    if args.append_to and commit is not None:
        setting = " ".join(
            [f"--set {item}" for item in args.set]
            + ([f"--max-seeds {max_seeds}"] if max_seeds > args.seeds else [])
            + ([f"--seed-start {args.seed_start}"] if args.seed_start else [])
        )
        append_block(Path(args.append_to), rows, command, commit, setting or None)
        print(f"appended to {args.append_to}; update its status section by hand")


if __name__ == "__main__":
    main()
