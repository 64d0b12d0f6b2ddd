"""The conflict checker: techniques that predict whether a combination of defenses conflicts.

`check(["model_watermark", "backdoor_pruning"])` returns a `Verdict`. Techniques are looked up
by name in `TECHNIQUES`; a new one plugs in with a single `register(...)` call.
"""

from defcon.checker.base import TECHNIQUES, Technique, get_technique, register, techniques
from defcon.checker.defcon_technique import DefConTechnique
from defcon.checker.factors_technique import FactorsTechnique
from defcon.checker.naive import NaiveTechnique
from defcon.checker.verdict import Conflict, FactorChain, Precedence, StructuralClash, Verdict

register(DefConTechnique())
register(NaiveTechnique())
register(FactorsTechnique())

from defcon.checker.api import check  # noqa: E402  (after the registrations it relies on)

__all__ = [
    "TECHNIQUES",
    "Conflict",
    "DefConTechnique",
    "FactorChain",
    "FactorsTechnique",
    "NaiveTechnique",
    "Precedence",
    "StructuralClash",
    "Technique",
    "Verdict",
    "check",
    "get_technique",
    "register",
    "techniques",
]
