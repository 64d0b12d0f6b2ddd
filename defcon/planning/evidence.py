"""What `defcon plan` knows beyond declarations: the dataset's facts and past measurements.

Both are read without torch: a built-in dataset's facts come from `defcon.planning.dataset_info`'s registry
(nothing is loaded), and composition records are plain JSON. A measurement outranks a
prediction of the same confidence, so a combination measured `effective` is offered before an
unmeasured one, and one measured `ineffective` is not offered at all (the record is named).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from defcon.errors import DefconError
from defcon.planning.dataset_info import datasets
from defcon.planning.records import CompositionRecord, readable
from defcon.planning.rules import DataFacts


def builtin_facts(name: str) -> DataFacts:
    """A built-in dataset's kind and sensitive attribute, read from its description (no loading)."""
    known = datasets()
    if name in known:
        return DataFacts.of(known[name])
    accepted = ", ".join(known)
    raise DefconError(
        f"--dataset '{name}' is not a built-in dataset; plan reads the facts of {accepted} "
        "without loading them"
    )


@dataclass(frozen=True)
class Evidence:
    """One composition record of a combination, reduced to what ranks a plan."""

    path: Path
    dataset: str
    label: str
    conclusive: bool
    held: int  # defenses whose outcome is `held`
    defenses: int
    cost: float  # clean accuracy lost by the combination vs no defense (fraction; nan: unknown)
    seconds: float

    @classmethod
    def of(cls, record: CompositionRecord, path: Path) -> Evidence:
        before, after = record.clean_accuracy_no_defense.mean, record.clean_accuracy_combined.mean
        cost = before - after if before is not None and after is not None else math.nan
        return cls(
            path, record.dataset, record.label, record.conclusive,
            sum(r.outcome == "held" for r in record.results), len(record.results),
            cost, record.wall_time_s,
        )  # fmt: skip

    @property
    def effective(self) -> bool:
        return self.conclusive and self.label == "effective"

    @property
    def ineffective(self) -> bool:
        return self.conclusive and self.label == "ineffective"

    def sentence(self) -> str:
        """`measured effective on fmnist (PATH): 2/2 held, clean accuracy -1.3 pts, 190 s`."""
        word = self.label
        if not self.conclusive and self.label in ("effective", "ineffective"):
            word += " (unreliable: the undefended model was underfit)"
        cost = "clean accuracy cost unknown"
        if math.isfinite(self.cost):
            cost = f"clean accuracy {-100 * self.cost:+.1f} pts"
        return (
            f"measured {word} on {self.dataset} ({self.path}): {self.held}/{self.defenses} held, "
            f"{cost}, {self.seconds:.0f} s"
        )

    def rank(self) -> tuple[float, float]:
        """Among effective measurements: the smaller accuracy cost, then the faster run, first."""
        return (self.cost if math.isfinite(self.cost) else math.inf, self.seconds)


EvidenceMap = dict[frozenset[str], list[Evidence]]


def load_evidence(
    folder: Path, dataset: str | None = None, warn: Callable[[str], None] = lambda m: None
) -> EvidenceMap:
    """Composition records under `folder` by the set of defenses they measured.

    Only records on `dataset` count when it is given. Files that are not composition records
    (audit records, other JSON) are skipped; an unreadable one is reported through `warn`.
    """
    if not folder.is_dir():
        raise DefconError(f"--records '{folder}' is not a folder (expected a folder of records)")
    found: EvidenceMap = {}
    for path in sorted(folder.rglob("*.json")):
        try:
            record = readable(
                CompositionRecord.model_validate_json(path.read_bytes()), f"record file '{path}'"
            )
        except (ValidationError, ValueError, OSError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            warn(f"warning: skipped {path}: not a readable composition record ({first})")
            continue
        if dataset is not None and record.dataset != dataset:
            continue
        found.setdefault(frozenset(record.defenses), []).append(Evidence.of(record, path))
    return found


def deciding(evidence: list[Evidence]) -> Evidence | None:
    """The record that decides a combination's place: a conclusive `ineffective` one first (it
    excludes the plan), else the best conclusive `effective` one, else the first measured."""
    if not evidence:
        return None
    for item in evidence:
        if item.ineffective:
            return item
    effective = sorted((e for e in evidence if e.effective), key=Evidence.rank)
    return effective[0] if effective else evidence[0]
