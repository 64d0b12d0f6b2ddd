"""The SoK's guideline as data: which way a defense moves each risk, predicted from factors.

Duddu, Szyller, Asokan, "SoK: Unintended Interactions among Machine Learning Defenses and
Risks", IEEE S&P 2024: Table 2 says how each risk's susceptibility goes with the factors
(`RISK_FACTORS`, copied here with its citation) and §4.4 how to combine arrows. A defense's
`moves` declaration says which way it pushes each factor when effective. For a defense D and a
risk R, every factor both name is a link: D moves f the same way R's susceptibility goes with f
(↑↑ or ↓↓) → R rises; opposite → R falls. All links agreeing give the prediction; when they
disagree the objective's factors (O1, O2.x, O3) decide, and a tie, or no shared factor, leaves
the guideline silent. A risk the defense declares it mitigates is predicted to fall (declared,
not from factors). No rule here names a defense.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from defcon.vocabulary import Arrow, DefenseSpec, Factor, Risk, sok_guideline

SOK = (
    "Duddu, Szyller, Asokan, SoK: Unintended Interactions among Machine Learning Defenses and "
    "Risks, IEEE S&P 2024, Table 2 (how risks go with factors) and §4.4 (the guideline)"
)
_UP, _DOWN = Arrow.UP, Arrow.DOWN
RISK_FACTORS: dict[Risk, tuple[tuple[Factor, Arrow], ...]] = {
    Risk.EVASION: ((Factor.D2, _UP), (Factor.O1, _DOWN), (Factor.O3, _DOWN)),
    Risk.POISONING: ((Factor.D2, _UP), (Factor.M1, _UP)),
    Risk.MODEL_THEFT: ((Factor.M1, _DOWN),),
    Risk.MEMBERSHIP_INFERENCE: (
        (Factor.D1, _DOWN), (Factor.D2, _UP), (Factor.D4, _DOWN), (Factor.O2_1, _UP),
        (Factor.O3, _DOWN), (Factor.M1, _UP),
    ),
    Risk.DATA_RECONSTRUCTION: (
        (Factor.D2, _UP), (Factor.D3, _DOWN), (Factor.O2_1, _UP), (Factor.O2_2, _UP),
    ),
    Risk.ATTRIBUTE_INFERENCE: ((Factor.D2, _UP), (Factor.D4, _DOWN), (Factor.O2_2, _UP)),
    Risk.DISTRIBUTION_INFERENCE: (
        (Factor.D2, _UP), (Factor.D4, _UP), (Factor.O2_1, _UP), (Factor.M1, _UP),
    ),
    Risk.DISCRIMINATION: ((Factor.D2, _UP), (Factor.O2_2, _UP)),
}  # fmt: skip
"""Risk → (factor, how susceptibility goes with it) — SoK Table 2, as docs/factors.md has it."""

Predicted = Literal["up", "down", "silent"]
SYMBOL: dict[str, str] = {"up": "↑", "down": "↓", "silent": "·"}


class Link(BaseModel):
    """One shared factor: how the defense moves it, how the risk goes with it, the result."""

    model_config = ConfigDict(frozen=True)

    factor: Factor
    defense_moves: Arrow
    risk_goes: Arrow
    reference: str

    @property
    def raises(self) -> bool:
        return self.defense_moves is self.risk_goes

    def text(self) -> str:
        return f"{self.factor.value}{self.defense_moves.symbol}·R{self.risk_goes.symbol}"


class Prediction(BaseModel):
    """The predicted direction of one risk under one defense (or a combination), and why."""

    model_config = ConfigDict(frozen=True)

    risk: Risk
    direction: Predicted
    basis: Literal["mitigates", "unanimous", "objective", "tie", "no_shared_factor", "combined"]
    links: tuple[Link, ...] = ()
    reason: str

    @property
    def symbol(self) -> str:
        return SYMBOL[self.direction]


def predict(spec: DefenseSpec, risk: Risk) -> Prediction:
    """The guideline's direction for `risk` when `spec`'s defense is effective."""
    if risk in spec.mitigates:
        return Prediction(
            risk=risk, direction="down", basis="mitigates",
            reason=f"{spec.name} declares it mitigates {risk.value}",
        )  # fmt: skip
    goes = dict(RISK_FACTORS.get(risk, ()))
    links = tuple(
        Link(
            factor=c.factor,
            defense_moves=c.direction,
            risk_goes=goes[c.factor],
            reference=c.reference,
        )
        for c in spec.moves
        if c.factor in goes
    )
    if not links:
        return Prediction(
            risk=risk, direction="silent", basis="no_shared_factor",
            reason=f"{spec.name} moves no factor {risk.value} goes with",
        )  # fmt: skip
    shown = ", ".join(link.text() for link in links)
    raises = sok_guideline([(link.factor, link.raises) for link in links])
    if raises is None:
        return Prediction(
            risk=risk, direction="silent", basis="tie", links=links,
            reason=f"shared factors disagree and the objective's do not decide ({shown})",
        )  # fmt: skip
    unanimous = len({link.raises for link in links}) == 1
    return Prediction(
        risk=risk, direction="up" if raises else "down",
        basis="unanimous" if unanimous else "objective", links=links,
        reason=f"every shared factor agrees ({shown})" if unanimous
        else f"shared factors disagree; the objective's decide ({shown})",
    )  # fmt: skip


def predict_combination(specs: Sequence[DefenseSpec], risk: Risk) -> Prediction:
    """A combination's direction: its defenses' predictions where they agree, else silent."""
    parts = [predict(spec, risk) for spec in specs]
    if len(parts) == 1:
        return parts[0]
    said = {p.direction for p in parts if p.direction != "silent"}
    links = tuple(link for p in parts for link in p.links)
    reason = "; ".join(f"{spec.name}: {p.symbol}" for spec, p in zip(specs, parts, strict=True))
    direction: Predicted = said.pop() if len(said) == 1 else "silent"
    if len({p.direction for p in parts if p.direction != "silent"}) > 1:
        reason += " (the defenses disagree)"
    return Prediction(risk=risk, direction=direction, basis="combined", links=links, reason=reason)
