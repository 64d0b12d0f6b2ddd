"""The paper's naive baseline: a combination conflicts iff two of its defenses share a stage.

It knows nothing about risks, which is why the benchmark compares Def\\Con against it.
"""

from __future__ import annotations

from collections.abc import Sequence

from defcon.checker.base import by_stage, clash_text, structural_clashes, validated
from defcon.checker.verdict import Verdict
from defcon.vocabulary import DefenseSpec


class NaiveTechnique:
    """Confidence: always 1.0, never abstains (a stage is shared or not; nothing is weighed)."""

    name = "naive"
    summary = "naive baseline: two defenses acting in the same stage conflict"

    def check(self, specs: Sequence[DefenseSpec]) -> Verdict:
        specs = validated(specs)  # sorted by name, so each stage lists its defenses sorted
        stages = {
            stage.value: tuple(s.name for s in members)
            for stage, members in by_stage(specs).items()
        }
        crowded = {stage: names for stage, names in stages.items() if len(names) > 1}
        if crowded:
            listing = "; ".join(f"{stage}: {', '.join(names)}" for stage, names in crowded.items())
            explanation = (
                "The naive baseline predicts a conflict because several defenses act in the "
                f"same stage ({listing})."
            )
        else:
            explanation = (
                "The naive baseline predicts no conflict: every defense acts in a different stage."
            )
        clashes = structural_clashes(specs)
        return Verdict(
            technique=self.name,
            label="ineffective" if crowded else "effective",
            defenses=tuple(spec.name for spec in specs),
            order=tuple(name for names in stages.values() for name in names),
            stages=stages,
            clashes=clashes,
            explanation=explanation + clash_text(clashes),
        )
