"""What the fairness defenses outside the training loop share: the sensitive attribute as the
inputs carry it, and the equalized-odds metric.

A pre-processing transform and a post-processing thresholder both act on *every served query*,
so they need the sensitive attribute from the query itself, not from the dataset's `s` arrays
(which only exist for the stored splits). The columns that carry it are the feature group named
like the dataset's sensitive attribute (Adult keeps `sex` among its one-hot features, COMPAS
`race`, a user's CSV its `--sensitive` column), or columns named in the defense's settings.

The metric is computed exactly as `group_fairness` computes it (fairlearn's
`equalized_odds_difference` of the served model's hard predictions on the test split, the
dataset's `s` being the sensitive feature), so the three fairness defenses report one number.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from fairlearn.metrics import equalized_odds_difference
from torch import nn

from defcon.engine.data import Dataset, Split
from defcon.engine.models import predict
from defcon.errors import DefconError

POSITIVE_CLASS = 1  # binary tasks: the favourable outcome (Adult: >50K; COMPAS: recidivism)


def fairness_problem(name: str, dataset: Dataset) -> str | None:
    """Why a fairness defense cannot run on `dataset` (None when it can)."""
    if dataset.sensitive_attribute is None or any(
        split.s is None for split in (dataset.train, dataset.val, dataset.test)
    ):
        return f"{name} needs a sensitive attribute; dataset '{dataset.name}' has none"
    return None


def sensitive_columns(
    name: str, dataset: Dataset, columns: Sequence[int] | None
) -> tuple[int, ...]:
    """The input columns carrying the sensitive attribute: `columns` when given, else those of
    the feature group named like the dataset's sensitive attribute (raises DefconError)."""
    problem = fairness_problem(name, dataset)
    if problem:
        raise DefconError(problem)
    width = dataset.train.x[0].numel()
    if dataset.train.x.ndim != 2:
        raise DefconError(f"{name} applies to tabular data; '{dataset.name}' inputs are not flat")
    if columns is not None:
        chosen = tuple(sorted(set(columns)))
        if not chosen or min(chosen) < 0 or max(chosen) >= width:
            raise DefconError(
                f"{name}: sensitive_columns {list(columns)} are not columns of the "
                f"{width} input features of '{dataset.name}'"
            )
        if len(chosen) == width:
            raise DefconError(f"{name}: every input column is declared sensitive")
        return chosen
    for group in dataset.feature_groups:
        if group.name == dataset.sensitive_attribute:
            return tuple(group.columns)
    raise DefconError(
        f"{name} reads the sensitive attribute '{dataset.sensitive_attribute}' from each input, "
        f"and no input feature of '{dataset.name}' is named so; name its columns with the "
        "setting sensitive_columns"
    )


class GroupReader(nn.Module):
    """The sensitive group of each input, read from its sensitive columns.

    Learnt from a split that has both: every pattern of the columns seen there and its group. A
    query gets the group of the nearest pattern, so a perturbed query (an adversarial example
    moves one-hot columns off {0, 1}) still gets a group. Buffers, no parameters.
    """

    def __init__(self, columns: Sequence[int], split: Split) -> None:
        super().__init__()
        if split.s is None:
            raise DefconError("the split the group reader learns from has no sensitive attribute")
        values = split.x[:, list(columns)]
        patterns, inverse = torch.unique(values, dim=0, return_inverse=True)
        groups = torch.full((len(patterns),), -1, dtype=torch.long)
        groups[inverse] = split.s
        if not torch.equal(groups[inverse], split.s):
            raise DefconError(
                f"the sensitive attribute is not a function of input columns {list(columns)}: "
                "rows with the same values there belong to different groups"
            )
        self.columns = tuple(columns)
        self.patterns: torch.Tensor
        self.groups: torch.Tensor
        self.register_buffer("patterns", patterns)
        self.register_buffer("groups", groups)

    @classmethod
    def restored(
        cls, columns: Sequence[int], patterns: torch.Tensor, groups: torch.Tensor
    ) -> GroupReader:
        """A reader with saved patterns and groups (a saved pipeline, `defcon.measure.artefact`)."""
        reader = cls.__new__(cls)
        nn.Module.__init__(reader)
        reader.columns = tuple(int(c) for c in columns)
        reader.register_buffer("patterns", patterns.clone())
        reader.register_buffer("groups", groups.clone())
        return reader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x.detach()[:, list(self.columns)].to(self.patterns)
        return self.groups[torch.cdist(values, self.patterns).argmin(1)]


def equalized_odds_gap(model: nn.Module, test: Split) -> float:
    """fairlearn's equalized-odds difference of `model`'s hard predictions on `test`."""
    assert test.s is not None
    was_training = model.training
    predicted = predict(model, test.x) == POSITIVE_CLASS
    model.train(was_training)
    return float(
        equalized_odds_difference(
            (test.y == POSITIVE_CLASS).numpy(), predicted.numpy(), sensitive_features=test.s.numpy()
        )
    )
