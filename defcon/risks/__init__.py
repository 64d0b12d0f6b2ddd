"""Risk attacks for `defcon audit`, one module per risk (each cites the attack it implements).

`ATTACKS` maps every risk defcon can measure to its attack (`register_attack` below; an installed
package adds one for a risk none measures through the entry-point group `defcon.risks`, read by
`risk_attacks()`). Data misuse and opacity have none:
they are not a property of a model an attacker can probe (a dataset's unauthorised use is shown
by the data owner's own watermark; opacity by the explanations served), so an audit lists them
as not measured.
"""

from __future__ import annotations

from defcon.risks.attribute import AttributeInference
from defcon.risks.base import (
    ATTACKS,
    UNMEASURED,
    AttackConfig,
    Lab,
    RiskAttack,
    RiskMetric,
    register_attack,
    risk_attacks,
    unmeasured,
)
from defcon.risks.discrimination import Discrimination
from defcon.risks.distribution import DistributionInference
from defcon.risks.evasion import Evasion
from defcon.risks.membership import MembershipInference
from defcon.risks.model_theft import ModelTheft
from defcon.risks.poisoning import Poisoning
from defcon.risks.reconstruction import DataReconstruction

for _attack in (
    Evasion, Poisoning, ModelTheft, MembershipInference, AttributeInference,
    DistributionInference, DataReconstruction, Discrimination,
):  # fmt: skip
    register_attack(_attack)  # the order an audit measures and lists them in

__all__ = [
    "ATTACKS", "UNMEASURED", "AttackConfig", "Lab", "RiskAttack", "RiskMetric",
    "register_attack", "risk_attacks", "unmeasured",
]  # fmt: skip
