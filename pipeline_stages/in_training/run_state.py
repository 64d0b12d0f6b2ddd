"""The share of the loss an in-training defense's term has been over a run: 0 says the term
never changed a gradient (a notice, `defcon.measure.model_notices`). Kept in the run's own state
(`TrainingRun.state`), like everything a defense keeps for one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from defcon.engine.training import TrainingRun


@dataclass
class LossShare:
    """A loss term's size beside the plain cross-entropy over a run's batches: 0 in the run's
    record ('NAME.acted.loss_share', `defcon.measure.model_notices`) says it never changed a gradient."""

    term: float = 0.0
    loss: float = 0.0

    def add(
        self, run: TrainingRun, name: str, term: float, logits: torch.Tensor, y: torch.Tensor
    ) -> None:
        """Count one batch's term (its size) and cross-entropy; record the share so far."""
        self.term += term
        with torch.no_grad():
            self.loss += float(F.cross_entropy(logits.detach(), y))
        total = self.term + self.loss
        run.record[f"{name}.acted.loss_share"] = self.term / total if total > 0 else 0.0
