"""`pilot`: predict a combination's label by measuring it briefly on a small slice.

The other techniques read declarations; this one trains. It composes the combination with the
`tiny` profile (1 000 Fashion-MNIST / 2 000 Adult training records, 4 epochs), on seeds disjoint
from the benchmark's (100, 101, 102), under the same rule as the full measurement
(`defcon.effectiveness`). Where the short run is conclusive its label is the prediction; where
it cannot tell (inconclusive, or a defense not effective alone on so little data) the prediction
falls back to a declaration technique (`factors` by default), and the explanation says which.
Its cost is seconds to minutes per combination instead of the full measurement's minutes to
hours; `benchmarks/pilot.py` reports both beside every technique's accuracy.

The settings (profile, seeds, fallback) were fixed before the pilot was first scored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from defcon.catalog import Catalog, builtin_catalog
from defcon.checker import check
from defcon.checker.verdict import Verdict
from defcon.errors import DefconError
from defcon.vocabulary import DefenseSpec

if TYPE_CHECKING:
    import torch

    from defcon.engine.data import UserData
    from defcon.planning.profiles import Profile

PILOT_PROFILE = "tiny"
PILOT_SEEDS = 3
PILOT_SEED_START = 100  # disjoint from the benchmark's 0… and its stability repeat's 1000…


class PilotResult(BaseModel):
    """The pilot's prediction, what the short run measured, and what it cost."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    measured_on_slice: str  # the short run's label, or "could not run"
    fell_back: bool  # the label is the fallback technique's
    seconds: float


class PilotTechnique:
    """Measure the combination on a small slice; fall back to a declaration technique where the
    short run cannot tell."""

    name = "pilot"
    summary = (
        "pilot: compose the combination on a small slice (tiny profile, 3 seeds) and read its "
        "label; where that cannot tell, the fallback technique's label"
    )

    def __init__(
        self,
        dataset: str | UserData,
        *,
        cache_dir: Path | str = "defcon-runs/cache",
        catalog: Catalog | None = None,
        data_dir: Path | str | None = None,
        fallback: str = "factors",
        profile: str | Profile = PILOT_PROFILE,
        seeds: int = PILOT_SEEDS,
        seed_start: int = PILOT_SEED_START,
        device: str | torch.device = "auto",
        configs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if fallback == self.name:
            raise DefconError("the pilot's fallback must be a declaration technique, not pilot")
        self.catalog = catalog or builtin_catalog()
        self.fallback = fallback
        self.seeds = seeds
        self.seed_start = seed_start
        from defcon.measure.composer import Composer  # torch: only when a pilot is built

        self.composer = Composer(
            dataset, profile=profile, cache_dir=cache_dir, data_dir=data_dir,
            catalog=self.catalog, device=device, configs=configs,
        )  # fmt: skip

    def check(self, specs: Sequence[DefenseSpec]) -> Verdict:
        return self.run(specs).verdict

    def run(self, specs: Sequence[DefenseSpec]) -> PilotResult:
        """The prediction for `specs`, with the short run's label and its cost in seconds."""
        base = check(list(specs), technique=self.fallback, catalog=self.catalog)
        started = time.perf_counter()
        if not base.composable:
            measured = "could not run"
        else:
            try:
                record = self.composer.compose(
                    [spec.name for spec in specs],
                    seeds=self.seeds,
                    seed_start=self.seed_start,
                    force=True,
                )
                measured = record.label
            except DefconError as error:
                measured = "could not run"
                base = base.model_copy(
                    update={"explanation": f"{base.explanation} The pilot could not run: {error}"}
                )
        seconds = time.perf_counter() - started
        conclusive = measured in ("effective", "ineffective")
        label = measured if conclusive else base.label
        seeds = f"seeds {self.seed_start}–{self.seed_start + self.seeds - 1}"
        evidence: dict[str, object] = {}
        if conclusive:
            said = (
                f"The pilot composed them on a small slice ({seeds}, {seconds:.0f} s) and "
                f"measured {measured}. The {self.fallback} technique, from the declarations "
                f"alone, predicts {base.label}."
            )
            # a measured label, not weighed evidence: confidence 1 (the fallback's otherwise)
            evidence = {
                "conflicts": (),
                "factor_chains": (),
                "weak_chains": (),
                "confidence": 1.0,
                "uncertain": False,
            }
        else:
            said = (
                f"The pilot's short run ({seeds}, {seconds:.0f} s) could not tell ({measured}); "
                f"the label is the {self.fallback} technique's: {base.explanation}"
            )
        verdict = base.model_copy(
            update={"technique": self.name, "label": label, "explanation": said, **evidence}
        )
        return PilotResult(
            verdict=verdict, measured_on_slice=measured, fell_back=not conclusive, seconds=seconds
        )
