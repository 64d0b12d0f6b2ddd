"""Offline RMIA: the membership attack shared by dp_sgd's metric and the audit's membership risk.

Zarifzadeh, Liu, Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024. For a
candidate x and population records z, LR(x, z) = [p(x|θ)/p(x)] / [p(z|θ)/p(z)] with p(·|θ) the
target's probability of the true label and p(·) its average over reference models trained on
population data (offline: no reference saw x, so p(x) = ((1 + a)·mean_ref p(x) + (1 − a))/2).
score(x) = share of z with LR(x, z) ≥ γ. Thresholds are set on records neither the target nor the
references saw, never on the members or the non-members being scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydantic import BaseModel
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from defcon.engine.data import Split

OFFLINE_A = 0.3  # the paper's offline interpolation constant (its Appendix tuning range)
GAMMA = 1.0  # the paper's pairwise likelihood-ratio threshold
# A run measuring any of these trains every arm in the profile's membership regime.
MEMBERSHIP_METRICS = frozenset({"mia_auc", "mia_tpr_at_1_fpr", "mia_tpr_at_0_1_fpr"})


@torch.no_grad()
def true_class_prob(model: nn.Module, split: Split, batch_size: int = 1024) -> np.ndarray:
    """p(y|x, θ) per row, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    parts = [
        torch.softmax(model(x).double(), 1).gather(1, y[:, None]).squeeze(1)
        for x, y in zip(split.x.split(batch_size), split.y.split(batch_size), strict=True)
    ]
    model.train(was_training)
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def rmia_from_probs(
    target_x: np.ndarray,
    refs_x: np.ndarray,
    target_z: np.ndarray,
    refs_z: np.ndarray,
    a: float = OFFLINE_A,
    gamma: float = GAMMA,
) -> np.ndarray:
    """RMIA scores of candidates from probabilities (refs_* are (references, rows)).

    The share of z with LR(x, z) ≥ γ is a non-decreasing function of ratio_x, and it saturates
    at 1 for the strongest candidates (small population sets), which would put every low-FPR
    threshold on a tie. The share is therefore returned with log ratio_x as a tie-breaker
    scaled below the share's resolution: the ordering is the paper's, with its ties broken.
    """
    prior_x = 0.5 * ((1 + a) * refs_x.mean(0) + (1 - a))
    prior_z = 0.5 * ((1 + a) * refs_z.mean(0) + (1 - a))
    ratio_x = target_x / np.maximum(prior_x, 1e-30)
    ratio_z = target_z / np.maximum(prior_z, 1e-30)
    ordered = np.sort(ratio_z)
    share = np.searchsorted(ordered, ratio_x / gamma, side="right") / max(len(ordered), 1)
    log_ratio = np.log(np.maximum(ratio_x, 1e-300))
    squashed = 0.5 + np.arctan(log_ratio) / np.pi  # in (0, 1), increasing in ratio_x
    return share + squashed / (2 * max(len(ordered), 1))


class MembershipReading(BaseModel):
    """What one RMIA run reports; `roc` holds (fpr, tpr) points for a log-scale ROC."""

    auc: float
    tpr_at_0_1_fpr: float
    tpr_at_1_fpr: float
    calibration_fpr: float
    roc: list[tuple[float, float]]


def rmia_attack(
    target: nn.Module,
    references: Sequence[nn.Module],
    members: Split,
    non_members: Split,
    population: Split,
    calibration: Split,
) -> MembershipReading:
    """Score members vs non-members; thresholds at 0.1 % and 1 % FPR come from `calibration`
    (unseen by the target and by every reference), so the TPRs are not tuned on the test."""
    target_z = true_class_prob(target, population)
    refs_z = np.stack([true_class_prob(r, population) for r in references])

    def score(split: Split) -> np.ndarray:
        refs = np.stack([true_class_prob(r, split) for r in references])
        return rmia_from_probs(true_class_prob(target, split), refs, target_z, refs_z)

    inside, outside, calib = score(members), score(non_members), score(calibration)
    labels = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
    values = np.r_[inside, outside]
    fpr, tpr, _ = roc_curve(labels, values)
    keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int)])

    def tpr_at(rate: float) -> float:
        threshold = float(np.quantile(calib, 1 - rate, method="higher"))
        return float((inside > threshold).mean())

    threshold_1 = float(np.quantile(calib, 0.99, method="higher"))
    return MembershipReading(
        auc=float(roc_auc_score(labels, values)),
        tpr_at_0_1_fpr=tpr_at(0.001),
        tpr_at_1_fpr=tpr_at(0.01),
        calibration_fpr=float((outside > threshold_1).mean()),
        roc=[(float(fpr[i]), float(tpr[i])) for i in keep],
    )
