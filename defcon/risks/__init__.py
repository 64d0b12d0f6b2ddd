"""Risk attacks for `defcon audit`, one module per risk (each cites the attack it implements).

`ATTACKS` maps every risk defcon can measure to its attack. Data misuse and opacity have none:
they are not a property of a model an attacker can probe (a dataset's unauthorised use is shown
by the data owner's own watermark; opacity by the explanations served), so an audit lists them
as not measured.
"""

from __future__ import annotations

from defcon.risks.attribute import AttributeInference
from defcon.risks.base import AttackConfig, Lab, RiskAttack, RiskMetric
from defcon.risks.discrimination import Discrimination
from defcon.risks.distribution import DistributionInference
from defcon.risks.evasion import Evasion
from defcon.risks.membership import MembershipInference
from defcon.risks.model_theft import ModelTheft
from defcon.risks.poisoning import Poisoning
from defcon.risks.reconstruction import DataReconstruction
from defcon.vocabulary import Risk

ATTACKS: dict[Risk, type[RiskAttack]] = {
    attack.risk: attack
    for attack in (
        Evasion, Poisoning, ModelTheft, MembershipInference, AttributeInference,
        DistributionInference, DataReconstruction, Discrimination,
    )
}  # fmt: skip
UNMEASURED: dict[Risk, str] = {
    Risk.DATA_MISUSE: "a property of how a dataset is used, not of a model an attacker can probe",
    Risk.OPACITY: "a property of what is explained to people, not of a model an attacker can probe",
}

__all__ = ["ATTACKS", "UNMEASURED", "AttackConfig", "Lab", "RiskAttack", "RiskMetric"]
