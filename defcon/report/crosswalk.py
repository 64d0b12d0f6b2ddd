"""Where each risk defcon measures sits in the EU AI Act and the NIST AI RMF.

A small table for reports read by people who sign off: the clause that asks for the evidence, not
a claim of compliance. EU AI Act (Regulation (EU) 2024/1689) Art. 15 asks high-risk systems for
accuracy, robustness and cybersecurity; 15(5) names data poisoning, model poisoning, adversarial
examples / model evasion, confidentiality attacks and model flaws. NIST AI RMF 1.0 MEASURE 2.7
covers security and resilience, 2.10 privacy, 2.11 fairness and bias, 2.9 explainability, 2.5
validity and reliability.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from defcon.vocabulary import Risk


class Clause(BaseModel):
    """The regulatory text a risk's evidence answers to."""

    model_config = ConfigDict(frozen=True)

    eu_ai_act: str
    nist_ai_rmf: tuple[str, ...]


ACCURACY = Clause(
    eu_ai_act="Art. 15(1), 15(3): an appropriate, declared level of accuracy",
    nist_ai_rmf=("MEASURE 2.5 (valid and reliable)",),
)

CROSSWALK: dict[Risk, Clause] = {
    Risk.EVASION: Clause(
        eu_ai_act="Art. 15(5): adversarial examples or model evasion",
        nist_ai_rmf=("MEASURE 2.7 (security and resilience)",),
    ),
    Risk.POISONING: Clause(
        eu_ai_act="Art. 15(5): data poisoning, model poisoning",
        nist_ai_rmf=("MEASURE 2.7 (security and resilience)",),
    ),
    Risk.MODEL_THEFT: Clause(
        eu_ai_act="Art. 15(5): confidentiality attacks (cybersecurity of the model)",
        nist_ai_rmf=("MEASURE 2.7 (security and resilience)",),
    ),
    Risk.DATA_MISUSE: Clause(
        eu_ai_act="not in Art. 15; Art. 53(1)(c): copyright policy (general-purpose models)",
        nist_ai_rmf=("MAP 4.1 (legal risks, incl. intellectual property)",),
    ),
    Risk.MEMBERSHIP_INFERENCE: Clause(
        eu_ai_act="Art. 15(5): confidentiality attacks",
        nist_ai_rmf=("MEASURE 2.10 (privacy risk)", "MEASURE 2.7 (security and resilience)"),
    ),
    Risk.ATTRIBUTE_INFERENCE: Clause(
        eu_ai_act="Art. 15(5): confidentiality attacks",
        nist_ai_rmf=("MEASURE 2.10 (privacy risk)",),
    ),
    Risk.DATA_RECONSTRUCTION: Clause(
        eu_ai_act="Art. 15(5): confidentiality attacks",
        nist_ai_rmf=("MEASURE 2.10 (privacy risk)",),
    ),
    Risk.DISTRIBUTION_INFERENCE: Clause(
        eu_ai_act="Art. 15(5): confidentiality attacks",
        nist_ai_rmf=("MEASURE 2.10 (privacy risk)",),
    ),
    Risk.DISCRIMINATION: Clause(
        eu_ai_act="not in Art. 15; Art. 10(2)(f)-(g): examination and mitigation of biases",
        nist_ai_rmf=("MEASURE 2.11 (fairness and bias)",),
    ),
    Risk.OPACITY: Clause(
        eu_ai_act="not in Art. 15; Art. 13: transparency to deployers",
        nist_ai_rmf=("MEASURE 2.9 (explained and interpretable)",),
    ),
}
