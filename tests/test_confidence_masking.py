"""Confidence masking: the served vector hides the confidences RMIA reads, labels unchanged."""

from __future__ import annotations

import pytest
import torch

from defcon.engine.models import predict
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
    coarse = ConfidenceMasking({"mode": "top_k", "top_k": 3, "decimals": 0}).apply(model, env)
    assert torch.equal(predict(coarse, x), predict(model, x))  # rounding ties keep the label


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


def test_gradients_through_the_api_are_the_models_own(overfit_digits):
    """No gradient masking: margins of the served outputs have the model's input gradients, and
    a cross-entropy attack on the API gets a non-zero gradient (PGD steps by its sign)."""
    env, model = overfit_digits
    served = ConfidenceMasking().apply(model, env)
    x = env.dataset.test.x[:8].clone().requires_grad_(True)
    y = env.dataset.test.y[:8]
    served.eval(), model.eval()
    margins = [torch.autograd.grad((net(x)[:, 0] - net(x)[:, 1]).sum(), x)[0]
               for net in (served, model)]  # fmt: skip
    assert margins[1].abs().sum() > 0
    assert torch.allclose(margins[0], margins[1], atol=1e-5)
    cross_entropy = torch.nn.functional.cross_entropy(served(x), y)
    assert torch.autograd.grad(cross_entropy, x)[0].abs().sum() > 0


def test_declared_not_applicable_to_tabular_data_with_a_cited_reason():
    """On tabular data the label it keeps carries the membership signal: check and compose say
    so before anything trains (the effective-alone table shows why)."""
    from defcon.catalog import builtin_catalog
    from defcon.planning.evidence import builtin_facts
    from defcon.planning.rules import applicability_problem
    from defcon.vocabulary import DataKind

    spec = builtin_catalog()["confidence_masking"]
    (declared,) = spec.not_applicable
    assert declared.kind is DataKind.TABULAR and "Choquette-Choo" in declared.reason
    assert "not applicable to tabular data" in applicability_problem(spec, builtin_facts("adult"))
    assert not applicability_problem(spec, builtin_facts("digits"))
