"""Unintended interactions: every catalog defense alone against every risk that applies, measured
and predicted (issue 11).

For each dataset and each defense with a mechanism that applies to it, `defcon audit NAME` (no
defense vs the defense alone, same adversary per risk, paired over seeds) gives the measured
change of each risk's primary metric: ↑ / ↓ when its paired interval excludes 0, – otherwise. The
SoK guideline over the factor declarations (`defcon.risks.guideline`) gives the predicted one.
Pairs a defense declares it mitigates are listed apart (a check of the attacks, not of the
guideline). The prediction accuracy counts the unintended pairs where the guideline speaks and
the measurement tells; pairs where it is silent, or wrong, are listed with their evidence.

Resumable: each (dataset, defense) audit is a JSON record under OUT/records, reused when present
for the same profile and seeds; models and measurements come from the cache (OUT/cache, or
--cache), shared with compose/bench. Prints where the time went.

    python benchmarks/unintended.py --datasets fmnist,adult --profile quick --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

from defcon.audit.auditor import CHANGE_SYMBOL, Auditor, AuditRecord, save_audit
from defcon.catalog import builtin_catalog
from defcon.cli.main import run_script
from defcon.measure.composer import Composer, applicability_problem
from defcon.storage import atomic_write_json, atomic_write_text
from defcon.terminal import say

OUT = Path("benchmarks/results/unintended")


def audit_all(
    dataset: str,
    *,
    profile: str,
    seeds: int,
    out: Path,
    cache: Path,
    only: list[str] | None = None,
    log=print,
) -> tuple[list[AuditRecord], dict[str, float]]:
    """One audit per applicable defense (records reused when present); seconds spent by label."""
    composer = Composer(dataset, profile=profile, cache_dir=cache, log=lambda m: log(f"  {m}"))
    auditor = Auditor(composer)
    catalog = builtin_catalog()
    records: list[AuditRecord] = []
    for name in sorted(only or catalog):
        spec = catalog[name]
        if spec.implementation is None:
            continue
        problem = applicability_problem(spec, composer.dataset(0))
        if problem:
            log(f"{dataset}: skipping {name}: {problem}")
            continue
        path = out / "records" / f"{dataset}-{profile}-seeds{seeds}-{name}.json"
        if path.is_file():
            records.append(AuditRecord.model_validate_json(path.read_text()))
            log(f"{dataset}: {name}: record reused ({path})")
            continue
        started = time.perf_counter()
        log(f"{dataset}: auditing {name}")
        try:
            record = auditor.audit([name], seeds=seeds)
        except Exception:  # one defense failing must not lose the others
            atomic_write_text(path.with_suffix(".failed.txt"), traceback.format_exc())
            log(f"{dataset}: {name} FAILED (see {path.with_suffix('.failed.txt')})")
            continue
        save_audit(record, path)
        records.append(record)
        log(f"{dataset}: {name} done in {time.perf_counter() - started:.0f} s")
    return records, dict(composer.cache.seconds)


def pairs(records: list[AuditRecord]) -> list[dict]:
    """Per (dataset, defense, risk): predicted vs measured on the primary metric, with evidence."""
    rows = []
    for record in records:
        (defense,) = record.order
        for risk in record.risks:
            m = record.primary(risk)
            p = record.predictions[defense][risk.value]
            measured = m.risk_change[defense]
            change = m.change[defense]
            if p.basis == "mitigates":
                verdict = "intended"
            elif p.direction == "silent":
                verdict = "silent"
            elif measured == "none":
                verdict = "not told apart"
            else:
                verdict = "right" if measured == p.direction else "wrong"
            rows.append(
                {
                    "dataset": record.dataset, "defense": defense, "risk": risk.value,
                    "metric": m.metric, "riskier": m.riskier.value,
                    "no_defense": str(m.values["no defense"]), "alone": str(m.values[defense]),
                    "change": change.model_dump(), "measured": measured,
                    "predicted": p.direction, "basis": p.basis, "reason": p.reason,
                    "verdict": verdict, "seeds": len(record.seeds),
                }
            )  # fmt: skip
    return rows


def summary(rows: list[dict]) -> dict:
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["verdict"]] += 1
    judged = counts["right"] + counts["wrong"]
    return {
        "pairs": len(rows),
        "verdicts": dict(counts),
        "accuracy": counts["right"] / judged if judged else None,
        "judged": judged,
    }


def markdown(rows: list[dict], stats: dict, seconds: dict[str, float], command: str) -> str:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.3f}"

    lines = [
        "# Unintended interactions: predicted (SoK guideline) vs measured",
        "",
        f"Generated by `{command}`. Each defense alone vs no defense, same adversary per risk, "
        "paired over seeds; measured ↑/↓ when the 90 %-per-side interval of the primary "
        "metric's change excludes 0 (read in the risk's direction), – otherwise. Predicted from "
        "the defense's `moves` and the SoK's risk-factor table (`defcon/risks/guideline.py`); "
        "· = the guideline is silent.",
        "",
        f"**Prediction accuracy: {stats['accuracy'] if stats['accuracy'] is None else round(stats['accuracy'], 3)}** "
        f"over {stats['judged']} unintended pairs where the guideline speaks and the measurement "
        f"tells; verdicts: {json.dumps(stats['verdicts'])}.",
        "",
        "| dataset | defense | risk | metric | no defense | alone | change [interval] | measured | predicted | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["change"]
        lines.append(
            f"| {r['dataset']} | {r['defense']} | {r['risk']} | {r['metric']} | {r['no_defense']} "
            f"| {r['alone']} | {fmt(c['mean'])} [{fmt(c['lower'])}, {fmt(c['upper'])}] "
            f"| {CHANGE_SYMBOL[r['measured']]} | {SYMBOLS[r['predicted']]} | {r['verdict']} |"
        )
    for title, verdict in (("Wrong", "wrong"), ("Silent", "silent")):
        chosen = [r for r in rows if r["verdict"] == verdict]
        lines += ["", f"## {title} ({len(chosen)})", ""]
        lines += [
            f"- {r['dataset']} {r['defense']} → {r['risk']}: measured {CHANGE_SYMBOL[r['measured']]} "
            f"({r['metric']} {r['no_defense']} → {r['alone']}), predicted "
            f"{SYMBOLS[r['predicted']]}: {r['reason']}"
            for r in chosen
        ] or ["- none"]
    lines += ["", "## Where the time went (computed this run, seconds)", ""]
    lines += [
        f"- {label}: {value:.0f}" for label, value in sorted(seconds.items(), key=lambda kv: -kv[1])
    ]
    return "\n".join(lines) + "\n"


SYMBOLS = {"up": "↑", "down": "↓", "silent": "·"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fmnist,adult")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cache", type=Path, default=None, help="default: OUT/cache")
    parser.add_argument("--defenses", default="", help="comma-separated (default: the catalog)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    records: list[AuditRecord] = []
    seconds: dict[str, float] = defaultdict(float)
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        found, spent = audit_all(
            dataset, profile=args.profile, seeds=args.seeds, out=args.out,
            cache=args.cache or args.out / "cache",
            only=[d for d in args.defenses.split(",") if d] or None,
            log=say,
        )  # fmt: skip
        records += found
        for label, value in spent.items():
            seconds[f"{dataset}: {label}"] += value
    rows = pairs(records)
    stats = summary(rows)
    command = "python benchmarks/unintended.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    atomic_write_json(args.out / "unintended.json", {"summary": stats, "pairs": rows})
    atomic_write_text(args.out / "UNINTENDED.md", markdown(rows, stats, seconds, command.strip()))
    print(f"accuracy {stats['accuracy']} over {stats['judged']} judged pairs; {stats['verdicts']}")
    print(f"wall time {time.perf_counter() - started:.0f} s; where it went:")
    for label, value in sorted(seconds.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {value:8.1f} s  {label}")
    print(f"results: {args.out / 'UNINTENDED.md'}")
    return 0


if __name__ == "__main__":
    run_script(main)
