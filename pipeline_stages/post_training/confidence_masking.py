"""Confidence masking of the prediction API (mitigates membership inference).

Mechanism. Confidence-based membership attacks read how sure the model is of a record's true
label: an overfit model is surer on its training records. Shokri, Stronati, Song, Shmatikov
("Membership Inference Attacks Against Machine Learning Models", IEEE S&P 2017, §VI) propose
serving less of the output vector as a countermeasure (only the top-k classes, probabilities
rounded to a few decimals, or only the label); MemGuard (Jia, Salem, Backes, Zhang, Gong,
CCS 2019) keeps the label and changes the confidences so that an attack cannot read membership
from them. This defense is the label-preserving masking of that family, with no learned noise:

- ``mode = "label"`` (default): the API serves the top-1 label with a fixed confidence
  (``confidence`` on the predicted class, the rest spread equally over the others);
- ``mode = "top_k"``: the ``top_k`` largest probabilities, rounded to ``decimals``, the others 0.

The served argmax is the model's own, so clean accuracy is unchanged by construction.

Served outputs. `apply` returns `MaskedAPI`, a serving wrapper whose outputs are the logarithms
of the served probability vector (zeros floored at `FLOOR`, so every output is finite):
softmax of what it returns is what a client receives. The attack reads the model through the
same forward pass a client calls, so it sees the masked vector, never the hidden one. Gradients
through the API are the model's own (straight-through, BPDA): the masking keeps every label, so
it must not pass for robustness against evasion by hiding gradients (obfuscated gradients,
Athalye, Carlini, Wagner, ICML 2018).

Measured by the shared offline RMIA (`pipeline_stages.membership`), on the served outputs. On a
label-only API the target's probability of the true label takes two values (correct or not),
so RMIA becomes the gap attack (Yeom, Giacomelli, Fredrikson, Jha, CSF 2018: a member is a
record the model gets right) calibrated per record by the reference models' difficulty. That is
what defcon's attack can read from what is served; it is *not* the strongest label-only threat:
label-only attacks that query perturbed copies of a record and read how robust its label is
(Choquette-Choo, Tramèr, Carlini, Papernot, "Label-Only Membership Inference Attacks", ICML
2021; Li & Zhang, CCS 2021) recover much of the confidence attack's power against exactly this
masking, and defcon does not run them. A verdict of this defense is therefore "effective
against confidence-reading attacks". ``gap_attack_advantage`` (reported, not judged) is the
label-only leak the masking leaves by design: accuracy on members minus on non-members.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from defcon.engine.defense import DefenseConfig, Environment, PostTrainingDefense, ServingWrapper
from defcon.engine.models import predict
from pipeline_stages.membership import MEMBERSHIP_METRIC_NAMES, membership_metrics, membership_sets

FLOOR = 1e-12  # the probability a served zero becomes, so the served logits stay finite
# Added to the model's own class after rounding: far below any rounding step served, far above
# float32's resolution of the served log-probabilities, so a rounding tie keeps the model's label.
TIE_BREAK = 1e-6


class ConfidenceMaskingConfig(DefenseConfig):
    """What the API serves, and how many records the membership attack scores."""

    mode: Literal["label", "top_k"] = Field(
        default="label",
        description="label: the top-1 label with a fixed confidence; top_k: the k largest "
        "probabilities, rounded",
    )
    confidence: float = Field(
        default=1.0,
        gt=0.5,
        le=1.0,
        description="label mode: the probability served for the predicted class (the rest is "
        "spread equally over the other classes)",
    )
    top_k: int = Field(
        default=1, ge=1, description="top_k mode: classes whose probability is served"
    )
    decimals: int = Field(
        default=1, ge=0, le=6, description="top_k mode: decimals the served probabilities keep"
    )
    mia_samples: int = Field(default=2000, ge=10, description="cap per side (members, others)")


def masked_probabilities(
    logits: torch.Tensor, mode: str, confidence: float, top_k: int, decimals: int
) -> torch.Tensor:
    """The probability vector the API serves for each row; its argmax is the model's own."""
    classes = logits.shape[1]
    top = logits.argmax(1)
    if mode == "label":
        rest = (1.0 - confidence) / max(classes - 1, 1)
        served = torch.full_like(logits, rest, dtype=torch.float64)
        served[torch.arange(len(top), device=top.device), top] = confidence
        return served
    probs = torch.softmax(logits.double(), 1)
    kept = probs.topk(min(top_k, classes), dim=1)
    served = torch.zeros_like(probs)
    scale = 10.0**decimals
    served.scatter_(1, kept.indices, torch.round(kept.values * scale) / scale)
    # Rounding may tie the top class with another: the model's own label must stay the argmax.
    served[torch.arange(len(top), device=top.device), top] += TIE_BREAK
    return served


class MaskedAPI(ServingWrapper):
    """The prediction API serving a masked output vector (as log-probabilities)."""

    def __init__(
        self, model: nn.Module, mode: str, confidence: float, top_k: int, decimals: int
    ) -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.confidence = confidence
        self.top_k = top_k
        self.decimals = decimals

    def saved_settings(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "confidence": self.confidence,
            "top_k": self.top_k,
            "decimals": self.decimals,
        }

    @classmethod
    def restore(
        cls, model: nn.Module, settings: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> MaskedAPI:
        return cls(
            model, settings["mode"], settings["confidence"], settings["top_k"], settings["decimals"]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        served = masked_probabilities(
            logits.detach(), self.mode, self.confidence, self.top_k, self.decimals
        )
        shown = torch.log(served.clamp_min(FLOOR))  # float64, like the tie-break above
        # Straight-through gradient (BPDA: Athalye, Carlini, Wagner, ICML 2018): the values are
        # the masked ones, the gradient the model's own log-softmax. The served argmax is the
        # model's, so a gradient attack on the API must do as well as on the model; a zero
        # gradient would be gradient masking, robustness the API does not have.
        own = torch.log_softmax(logits.double(), 1)
        return (own + (shown - own).detach()).to(logits.dtype)


class ConfidenceMasking(PostTrainingDefense):
    """Serve the label (or rounded top-k probabilities) instead of the full confidence vector."""

    Config: ClassVar[type[DefenseConfig]] = ConfidenceMaskingConfig
    config: ConfidenceMaskingConfig
    metric_names: ClassVar[tuple[str, ...]] = (*MEMBERSHIP_METRIC_NAMES, "gap_attack_advantage")

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """The masking API around a copy of `model` (the weights are unchanged)."""
        cfg = self.config
        return MaskedAPI(copy.deepcopy(model), cfg.mode, cfg.confidence, cfg.top_k, cfg.decimals)

    def gap_advantage(self, model: nn.Module, env: Environment) -> float:
        """Accuracy of the served labels on members minus on non-members (Yeom et al. 2018's
        gap attack's advantage), on the sets the membership attack scores."""
        inside, outside = membership_sets(env, self.name, self.config.mia_samples)
        hits_in = (predict(model, inside.x) == inside.y).float().mean()
        hits_out = (predict(model, outside.x) == outside.y).float().mean()
        return float(hits_in - hits_out)

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Offline RMIA on the served outputs, and the label-only gap the masking leaves."""
        return {
            **membership_metrics(model, env, self.name, self.config.mia_samples),
            "gap_attack_advantage": self.gap_advantage(model, env),
        }
