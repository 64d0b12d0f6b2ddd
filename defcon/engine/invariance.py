"""Excessive invariance inside the evasion ε-ball, measured beside robust accuracy.

Tramèr, Behrmann, Carlini, Papernot, Jacobsen, "Fundamental Tradeoffs between Invariance and
Sensitivity to Adversarial Perturbations", ICML 2020: an L∞ ball large enough to be "robust" in
can also contain inputs whose *true* class differs from the original's. A model that keeps its
label on those is excessively invariant; robust accuracy rewards exactly that, so it is reported
next to it. Higher invariance error is worse.

How one label-changing perturbation is built, for a seeded subset of test inputs x (label y):

- **Target.** x′ = the training example of another class that the ball around x gets closest
  to: the smallest ‖(|x′ − x| − ε)₊‖₂, the L2 distance from x′ to the L∞ ball (plain L2 at ε = 0).
  Not L∞: between two images it is set by the one most different pixel (close to 1 for almost
  any pair of Fashion-MNIST images), so it cannot rank neighbours. A shortlist by plain L2
  keeps the search cheap.
- **Direction.** x̃ = x + clip(x′ − x, −ε, ε), the projection of x′ onto the ball: the point of
  the ball nearest x′ in every Lp norm, so the strongest model-agnostic move toward x′ the
  budget allows (and inside [0, 1], between x and x′). The straight line x + min(1, ε/‖x′ − x‖∞)
  (x′ − x) is the other option; it was not taken, because ‖x′ − x‖∞ is close to 1 for images,
  so at ε = 0.1 it moves a tenth of the way and would almost never reach another class.
- **Oracle (a proxy).** Tramèr et al. asked humans whether the class changed. Here a declared,
  model-independent proxy decides: a k-nearest-neighbour vote (L2, k = 5) over the clean
  training split. x̃ counts as label-changing only if (1) the vote on x is a strict majority
  for y (the oracle recognises the start), (2) the vote on x̃, with x′ itself left out of the
  references (the oracle is not handed the answer), is a strict majority for x′'s class, and
  (3) x̃ is closer to x′ than to x in L2 (it has moved past the midpoint). It is a proxy, not a
  human: conservative by construction (three conditions), blind to what a k-NN in pixel space
  cannot see.

Invariance error = the share of label-changing perturbations on which the model's prediction
does not change (pred(x̃) = pred(x)): a constant classifier scores 1. The number found, n, is
reported with it; with n = 0 the ball holds no label change this oracle recognises and the error
is NaN ("not measurable"), never a made-up number. The perturbations depend on the data, seed
and ε only, so every model of a seed is scored on the same ones.

Tabular data: not measured. Its columns are one-hot groups and scaled numbers, so a point
between two records is not a record, and the label (e.g. Adult's income) is an outcome that the
features do not determine (a k-NN is wrong on about one record in five), so no proxy can say
that the *true* class changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from defcon.engine.data import Dataset
from defcon.engine.models import predict
from defcon.engine.seeds import derived_seed
from defcon.vocabulary import DataKind

INVARIANCE_ERROR = "invariance_error"
LABEL_CHANGING = "invariance_label_changing"
REFERENCE = (
    "Tramèr, Behrmann, Carlini, Papernot, Jacobsen, Fundamental Tradeoffs between Invariance "
    "and Sensitivity to Adversarial Perturbations, ICML 2020"
)
TABULAR_REASON = (
    "not on tabular data: a point between two records is not a record (one-hot groups), and "
    "the label is an outcome the features do not determine, so no oracle can tell that the "
    "true class changed"
)


class InvarianceSettings(BaseModel):
    """How many inputs are perturbed and how strict the oracle proxy is (part of cache keys)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: int = Field(default=1000, ge=1, description="test inputs perturbed (seeded subset)")
    k: int = Field(default=5, ge=1, description="neighbours the k-NN oracle votes with")
    shortlist: int = Field(default=32, ge=1, description="L2 candidates re-ranked for x′")
    require_closer: bool = Field(default=True, description="x̃ closer to x′ than to x")


@dataclass(frozen=True)
class InvarianceSet:
    """Perturbed test inputs and the oracle's verdict on each (model-independent)."""

    x: torch.Tensor  # originals
    x_tilde: torch.Tensor  # x + clip(x′ − x, −ε, ε)
    y: torch.Tensor  # original labels
    target: torch.Tensor  # the class of x′
    label_changing: torch.Tensor  # bool: the oracle says the true class became `target`
    eps: float

    @property
    def n(self) -> int:
        return int(self.label_changing.sum())


def not_applicable(dataset: Dataset) -> str | None:
    """Why invariance is not measured on `dataset` (None: it is)."""
    return None if dataset.kind is DataKind.IMAGE else TABULAR_REASON


def _chunks(count: int, size: int = 256) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def _votes(
    queries: torch.Tensor, refs: torch.Tensor, labels: torch.Tensor, k: int,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Per query, the class holding a strict majority of its k nearest references (−1: none)."""
    k = min(k, len(refs) - (1 if excluded is not None else 0))
    out = []
    for part in _chunks(len(queries)):
        dist = torch.cdist(queries[part], refs)
        if excluded is not None:
            dist[torch.arange(dist.shape[0]), excluded[part]] = float("inf")
        votes = labels[dist.topk(k, largest=False).indices]
        winner = torch.mode(votes, dim=1).values
        strict = (votes == winner[:, None]).sum(1) * 2 > k
        out.append(torch.where(strict, winner, torch.full_like(winner, -1)))
    return torch.cat(out)


def invariance_set(
    dataset: Dataset, eps: float, seed: int, settings: InvarianceSettings | None = None
) -> InvarianceSet:
    """Build x̃ for a seeded subset of the test split and let the oracle proxy judge each."""
    if not_applicable(dataset):
        raise ValueError(f"invariance on {dataset.name}: {not_applicable(dataset)}")
    settings = settings or InvarianceSettings()
    train = dataset.train  # the clean training split: true labels only
    test = dataset.test.seeded_sample(settings.samples, derived_seed(seed, "invariance"))
    x, y = test.x.flatten(1).float(), test.y
    refs, labels = train.x.flatten(1).float(), train.y
    nearest = torch.empty(len(y), dtype=torch.long)
    for part in _chunks(len(y)):
        dist = torch.cdist(x[part], refs)
        dist[labels[None, :] == y[part, None]] = float("inf")  # other classes only
        width = min(settings.shortlist, len(refs))
        candidates = dist.topk(width, largest=False).indices  # (chunk, width)
        gap = (refs[candidates] - x[part, None, :]).abs() - eps
        to_ball = gap.clamp(min=0).square().sum(2)
        to_ball[torch.isinf(dist.gather(1, candidates))] = float("inf")
        nearest[part] = candidates.gather(1, to_ball.argmin(1, keepdim=True)).squeeze(1)
    other = refs[nearest]
    x_tilde = x + (other - x).clamp(-eps, eps)
    target = labels[nearest]
    start = _votes(x, refs, labels, settings.k)
    moved = _votes(x_tilde, refs, labels, settings.k, excluded=nearest)
    changing = (start == y) & (moved == target)
    if settings.require_closer:
        changing &= (x_tilde - other).norm(dim=1) < (x_tilde - x).norm(dim=1)
    shape = (-1, *test.x.shape[1:])
    return InvarianceSet(
        x=test.x, x_tilde=x_tilde.reshape(shape).to(test.x.dtype), y=y, target=target,
        label_changing=changing, eps=float(eps),
    )  # fmt: skip


def invariance_error(model: nn.Module, found: InvarianceSet) -> dict[str, float]:
    """Share of label-changing x̃ on which the model keeps its prediction (NaN when n = 0)."""
    n = found.n
    if n == 0:
        return {INVARIANCE_ERROR: float("nan"), LABEL_CHANGING: 0.0}
    mask = found.label_changing
    before = predict(model, found.x[mask])
    after = predict(model, found.x_tilde[mask])
    return {INVARIANCE_ERROR: float((before == after).float().mean()), LABEL_CHANGING: float(n)}


def measure_invariance(
    model: nn.Module, dataset: Dataset, eps: float, seed: int,
    settings: InvarianceSettings | None = None,
) -> dict[str, float]:  # fmt: skip
    """`invariance_error` and the number of label-changing perturbations on `dataset`."""
    return invariance_error(model, invariance_set(dataset, eps, seed, settings))
