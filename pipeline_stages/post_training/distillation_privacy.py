"""Distillation for membership privacy (DMP; mitigates membership inference).

Mechanism (Shejwalkar & Houmansadr, "Membership Privacy for Machine Learning Models Through
Knowledge Distillation", AAAI 2021). The model trained on the private records (the teacher)
leaks membership because it fits those records; DMP serves instead a *student* that never sees
a private record: the teacher soft-labels a reference set of unlabelled records from the same
distribution, disjoint from the private data, and the student is trained from a fresh
initialisation on those soft labels only. What the student knows of a private record is what
the teacher generalises to the reference records, so its outputs on members and non-members
look alike. Knowledge transfer through soft labels: Hinton, Vinyals, Dean, "Distilling the
Knowledge in a Neural Network", 2015.

Here `apply` takes the trained (served) model as the teacher and returns a copy whose weights
are re-initialised (every parameterised module's ``reset_parameters``, seeded) and trained on
the teacher's soft labels, at temperature ``temperature``, for the reference records; serving
wrappers of earlier post-training defenses stay around the student (the teacher is queried
through them, as a client would be). The true labels of the reference records are never read.

Reference records: `env.attacker_data`, the half of the validation split held as public
population data (as backdoor_finetuning's clean set), disjoint from the owner's training
records and from `env.calibration_data`, which must stay unseen by the served model because the
attack calibrates its thresholds on it. The attacker's references train on halves of the same
public data; RMIA's ranking of candidates does not read the target's outputs on that data
beyond a monotone transform (`defcon.engine.rmia.rmia_from_probs`), so the overlap does not score a
record by construction. DMP also selects low-entropy reference records; every record is used
here.

Measured by the shared offline RMIA on the served model (`pipeline_stages.membership`).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from defcon.engine.defense import DefenseConfig, Environment, PostTrainingDefense, weights_of
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError
from pipeline_stages.membership import MEMBERSHIP_METRIC_NAMES, membership_metrics


class DistillationPrivacyConfig(DefenseConfig):
    """How the student is trained, and how many records the membership attack scores."""

    temperature: float = Field(
        default=1.0, gt=0, description="softmax temperature of the teacher's soft labels"
    )
    epochs: int | None = Field(
        default=None,
        ge=1,
        description="student training epochs (None: the profile's epochs for the dataset)",
    )
    mia_samples: int = Field(default=2000, ge=10, description="cap per side (members, others)")


def reinitialise(model: nn.Module, seed: int) -> None:
    """Fresh weights for every parameterised module (a student starts from scratch, not from the
    teacher); a module holding parameters without `reset_parameters` is refused."""
    stuck = [
        type(m).__name__
        for m in model.modules()
        if list(m.parameters(recurse=False)) and not hasattr(m, "reset_parameters")
    ]
    if stuck:
        raise DefconError(
            f"distillation_privacy: cannot re-initialise modules {sorted(set(stuck))} (no "
            "reset_parameters); the student must not start from the teacher's weights"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if list(module.parameters(recurse=False)):
                module.reset_parameters()  # type: ignore[operator]


@torch.no_grad()
def soft_labels(
    teacher: nn.Module, x: torch.Tensor, temperature: float, batch_size: int = 1024
) -> torch.Tensor:
    """The teacher's softened class probabilities for `x` (eval mode), on the CPU."""
    teacher.eval()
    parts = [
        torch.softmax(teacher(chunk).float() / temperature, 1).cpu()
        for chunk in x.split(batch_size)
    ]
    return torch.cat(parts)


class DistillationPrivacy(PostTrainingDefense):
    """Serve a student trained only on the teacher's soft labels of public reference records."""

    Config: ClassVar[type[DefenseConfig]] = DistillationPrivacyConfig
    config: DistillationPrivacyConfig
    metric_names: ClassVar[tuple[str, ...]] = MEMBERSHIP_METRIC_NAMES

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """A student in place of the model's weights (serving wrappers kept)."""
        cfg, profile = self.config, env.profile
        reference = env.attacker_data
        if len(reference) < 2:
            raise DefconError("distillation_privacy: needs at least 2 reference records")
        targets = soft_labels(model, reference.x, cfg.temperature)
        served = copy.deepcopy(model)
        student = weights_of(served)
        seed = derived_seed(env.seed, f"{self.name}:student")
        reinitialise(student, seed)
        optimizer = torch.optim.Adam(student.parameters(), lr=profile.lr)
        epochs = cfg.epochs or profile.epochs_for(env.dataset.name)
        generator = torch.Generator().manual_seed(seed)
        size = profile.batch_size
        student.train()
        for _ in range(epochs):
            order = torch.randperm(len(reference), generator=generator)
            batches = list(order.split(size))
            if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm needs two rows
                batches[-2] = torch.cat(batches[-2:])
                batches.pop()
            for rows in batches:
                optimizer.zero_grad(set_to_none=True)
                logits = student(reference.x[rows])
                wanted = targets[rows].to(logits.device)
                log_probs = F.log_softmax(logits / cfg.temperature, 1)
                # Hinton et al.'s T² keeps the gradient scale independent of the temperature.
                loss = F.kl_div(log_probs, wanted, reduction="batchmean") * cfg.temperature**2
                loss.backward()
                optimizer.step()
        served.eval()
        return served

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Offline RMIA on what the model serves."""
        return membership_metrics(model, env, self.name, self.config.mia_samples)
