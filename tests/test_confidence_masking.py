"""Confidence masking: the served vector hides the confidences RMIA reads, labels unchanged."""

from __future__ import annotations

import pytest
import torch

from defcon.models import predict
from pipeline_stages.post_training.confidence_masking import (
    ConfidenceMasking,
    masked_probabilities,
)


def test_masking_hides_membership_and_keeps_the_labels(overfit_digits):
    env, model = overfit_digits
    defense = ConfidenceMasking()
    served = defense.apply(model, env)
    plain = defense.measure(model, env)
    masked = defense.measure(served, env)
    assert plain["mia_auc"] >= 0.6, plain  # the undefended model leaks
    assert masked["mia_auc"] <= plain["mia_auc"] - 0.05, (plain, masked)
    assert masked["mia_tpr_at_1_fpr"] <= plain["mia_tpr_at_1_fpr"]
    x = env.dataset.test.x
    assert torch.equal(predict(served, x), predict(model, x))  # clean accuracy unchanged
    # the label-only leak is what masking leaves: the same labels give the same gap
    assert masked["gap_attack_advantage"] == pytest.approx(plain["gap_attack_advantage"])
    assert torch.isfinite(served(x[:50])).all()


def test_served_vectors():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.1, 0.05]])
    label = masked_probabilities(logits, "label", 1.0, 1, 1)
    assert torch.equal(label, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64))
    soft = masked_probabilities(logits, "label", 0.8, 1, 1)
    assert soft[0].tolist() == pytest.approx([0.8, 0.1, 0.1])
    top = masked_probabilities(logits, "top_k", 1.0, 2, 1)
    assert (top > 0).sum(1).tolist() == [2, 2]
    # rounding ties the two top classes of the second row; the model's label stays the argmax
    assert top.argmax(1).tolist() == logits.argmax(1).tolist()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="confidence"):
        ConfidenceMasking({"confidence": 0.4})
    with pytest.raises(ValueError, match="mode"):
        ConfidenceMasking({"mode": "noise"})
