"""Distillation for privacy: the served student never fits a private record, so RMIA drops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defcon.engine.models import accuracy
from defcon.errors import DefconError
from pipeline_stages.post_training.distillation_privacy import DistillationPrivacy, reinitialise


def test_student_hides_membership_and_still_classifies(overfit_digits):
    env, teacher = overfit_digits
    defense = DistillationPrivacy({"epochs": 60})
    student = defense.apply(teacher, env)
    plain = defense.measure(teacher, env)
    private = defense.measure(student, env)
    assert plain["mia_auc"] >= 0.6, plain  # the undefended model leaks
    assert private["mia_auc"] <= plain["mia_auc"] - 0.05, (plain, private)
    test = env.dataset.test
    assert accuracy(student, test.x, test.y) >= 0.5  # ten classes: it learned from the teacher
    # the teacher is untouched (no defense modifies its input)
    assert not any(
        torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True)
    )


def test_deterministic_for_a_seed(overfit_digits):
    env, teacher = overfit_digits
    defense = DistillationPrivacy({"epochs": 2})
    first, second = defense.apply(teacher, env), defense.apply(teacher, env)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_module_that_cannot_be_reinitialised_is_refused():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

    with pytest.raises(DefconError, match="Scale"):
        reinitialise(nn.Sequential(nn.Linear(3, 3), Scale()), seed=0)
