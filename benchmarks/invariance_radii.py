"""Invariance and robust accuracy of the same models in larger L∞ balls than they are judged in.

Supplementary to the stage benchmarks, which read invariance in the defense's own ε-ball only:
on Fashion-MNIST that ball (ε = 0.1) holds almost no label change the oracle proxy recognises,
so the reported invariance error is "not measurable" there. This asks what the metric says of
the same cached models when the ball is larger (ε 0.2, 0.3; Tramèr et al. found label changes
on MNIST from about 0.3), with the strict oracle and with the k-NN vote alone (no "closer to x′"
condition). Robust accuracy is read at each ε with the evasion risk's attack.

python benchmarks/invariance_radii.py   # writes benchmarks/results/new_defenses/invariance_radii.md
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from defcon.catalog import builtin_catalog
from defcon.effectiveness import Summary
from defcon.engine.fingerprint import risks_code
from defcon.engine.invariance import (
    INVARIANCE_ERROR,
    LABEL_CHANGING,
    InvarianceSettings,
    measure_invariance,
)
from defcon.measure.composer import NO_DEFENSE, Composer
from defcon.measure.standalone import invariance_cell
from defcon.risks.evasion import Evasion
from defcon.storage import atomic_write_text
from defcon.vocabulary import Risk

ROOT = Path(__file__).resolve().parent
ORACLES = {"strict": InvarianceSettings(), "k-NN only": InvarianceSettings(require_closer=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fmnist")
    parser.add_argument("--radii", default="0.1,0.2,0.3")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cache", default=str(ROOT.parent / ".defcon-cache"))
    parser.add_argument(
        "--out", default=str(ROOT / "results" / "new_defenses" / "invariance_radii.md")
    )
    args = parser.parse_args()
    os.environ.setdefault("DEFCON_PROGRESS", "0")
    started = time.perf_counter()
    composer = Composer(args.dataset, profile=args.profile, cache_dir=args.cache)
    kind = composer.dataset(0).kind
    evasion = [
        s.name for s in builtin_catalog().values()
        if Risk.EVASION in s.mitigates and (not s.data_kinds or kind in s.data_kinds)
    ]  # fmt: skip
    radii = [float(r) for r in args.radii.split(",")]
    values: dict[tuple[str, float, str], list[float]] = {}
    counts: dict[tuple[float, str], list[int]] = {}
    for seed in range(args.seeds):
        for arm in [NO_DEFENSE, *evasion]:
            result = composer.run_pipeline(
                composer.pipeline([] if arm == NO_DEFENSE else [arm], seed, False)
            )
            for eps in radii:
                measured: dict[str, float] = {}
                for oracle, settings in ORACLES.items():
                    attack = Evasion({"eps": eps, "invariance": settings.model_dump()})
                    key = {"model": result.model_key, "post": result.post_keys,
                           "radii": attack.cache_key(), "code": risks_code()}  # fmt: skip
                    if oracle == "strict":  # robust accuracy and strict invariance together
                        got = composer.cache.measurement(
                            key, lambda a=attack, r=result: a.run(r.model, r.env), label="evasion"
                        )
                        measured["robust_accuracy"] = got["robust_accuracy"]
                    else:
                        got = composer.cache.measurement(
                            key,
                            lambda r=result, e=eps, s=settings: measure_invariance(
                                r.model, r.env.dataset, e, r.env.seed, s
                            ),
                            label="invariance",
                        )
                    measured[oracle] = got[INVARIANCE_ERROR]
                    if arm == NO_DEFENSE:
                        counts.setdefault((eps, oracle), []).append(int(got[LABEL_CHANGING]))
                for name, value in measured.items():
                    values.setdefault((arm, eps, name), []).append(value)
    lines = [
        f"# Invariance and robust accuracy in larger L∞ balls ({args.dataset})",
        "",
        "Supplementary: the defenses are trained and judged at their own ε (0.1 on images); "
        "here the same cached models are read in larger balls. Invariance error ↓ (share of "
        "label-changing perturbations on which the model keeps its prediction), with n per "
        "seed; robust accuracy ↑ under the evasion risk's 10-step PGD at that ε (the audit's "
        "attack: its own seeded subset and random start, so at ε = 0.1 it differs slightly "
        "from the defense's own reading in the stage table).",
        "",
        "| ε | model | robust accuracy ↑ | invariance error ↓ (strict oracle) "
        "| invariance error ↓ (k-NN vote only) |",
        "|---|---|---|---|---|",
    ]
    for eps in radii:
        for arm in [NO_DEFENSE, *evasion]:
            cells = [str(Summary.of(values[(arm, eps, "robust_accuracy")]))]
            for oracle in ORACLES:
                cells.append(
                    invariance_cell(Summary.of(values[(arm, eps, oracle)]), counts[(eps, oracle)])
                )
            lines.append(f"| {eps:g} | {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Profile `{args.profile}`, seeds 0–{args.seeds - 1}, mean ± std over seeds. Strict "
        "oracle: the 5-NN vote and x̃ closer to x′ than to x (what the stage tables and the "
        "audit report); k-NN vote only: without the second condition (more cases, a weaker "
        "proxy). The oracle is a proxy, not a human judgement. Total wall time: "
        f"{time.perf_counter() - started:.0f} s. Produced by `python benchmarks/invariance_radii.py`.",
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
