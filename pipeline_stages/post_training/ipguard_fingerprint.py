"""IPGuard: fingerprinting the classification boundary (Cao, Jia, Gong, AsiaCCS 2021).

Mechanism. A model's decision boundary is its fingerprint. The owner finds data points just
across its own boundary and keeps them with the labels its model gives them. A stolen model (a
copy extracted through the API) has learnt the owner's boundary, so it labels those points as
the owner's model does; an independently trained model's boundary runs elsewhere, so near the
owner's boundary it agrees only by chance. The owner verifies a suspect, through its prediction
API alone, by the share of the fingerprint it labels like the owner's model: the matching rate.

Finding the points (Cao et al., Sec. 4). From a seeded start x labelled i by the owner's model,
with a target class j ≠ i, minimise ReLU(Z_i(x) − Z_j(x) + k) + ReLU(max_{t≠i,j} Z_t(x) − Z_i(x))
over x: the point crosses to class j by a logit margin k and stays on the i–j boundary. A small k
keeps points close to the boundary (unique to this model), a larger one makes them survive
changes to it (robust to fine-tuning and extraction). The search takes signed-gradient steps
and stops for each point as soon as the objective is zero; points that never reach j within
`steps` are dropped.

Valid records (docs/design.md §4: secrets are inputs that could exist). The starts are a seeded
sample of the owner's own training records (never the thief's data nor the test split); only
numeric input columns move (a one-hot category stays one category), each kept within the range
its training column spans. For images every pixel moves within the training range.

Measured on the copy a thief holds. Where the defense is deployed (`env.deployed`),
`fingerprint_match` is the matching rate of a stolen copy; without it, the owner's fingerprint
of the same model is checked against an independent model (`env.independent_model()`, the
threat model's architecture trained on the thief's population data with true labels): the
false-accusation reading. The difference between the two arms is the separation IPGuard must
achieve. The fingerprint is always generated from the owner's weights (`weights_of`), white-box,
as only the owner can. Two thieves (`thief`):

- ``finetune`` (default; IPGuard's threat model, Cao et al., Sec. 2 and 5: a pirate copies the
  weights and post-processes them): the weights, without any serving wrapper, fine-tuned on the
  thief's own labelled population data (`env.attacker_data`) for `finetune_epochs` at the
  profile's learning rate, all layers (Adi et al.'s FTAL), a copy that keeps its accuracy.
- ``extract``: the thief of `defcon.risks.model_theft` (the one the model-theft audit runs),
  which trains a fresh surrogate on the served API's top-1 answers. IPGuard does not claim this
  case: adversarial points near one model's boundary transfer poorly to a surrogate learnt from
  its labels (Lukas, Zhang, Kerschbaum, Deep Neural Network Fingerprinting by Conferrable
  Adversarial Examples, ICLR 2021), and on Adult the surrogate matched the fingerprint less than
  the independent model did, so it is a setting, not the default.

`apply` returns an unchanged copy: fingerprinting does not alter the model; the owner keeps the
fingerprint (re-derivable from the model and the seed) and runs the check on any suspect.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from defcon.engine.data import Dataset
from defcon.engine.defense import DefenseConfig, Environment, PostTrainingDefense, weights_of
from defcon.engine.models import predict
from defcon.engine.seeds import derived_seed
from defcon.errors import DefconError
from defcon.risks.model_theft import ModelTheft

MIN_POINTS = 20  # fewer found points make a matching rate too coarse to decide anything


class IPGuardConfig(DefenseConfig):
    """Settings of the fingerprint search (Cao et al., AsiaCCS 2021)."""

    points: int = Field(default=200, ge=MIN_POINTS, description="fingerprint size kept")
    candidates: int = Field(
        default=600, ge=MIN_POINTS, description="seeded starts searched (not all reach a target)"
    )
    margin: float = Field(
        default=0.5,
        ge=0,
        description="k: logit margin by which a point crosses into its target class (small: "
        "near the boundary, unique; large: robust)",
    )
    step: float = Field(default=0.005, gt=0, description="signed-gradient step per input feature")
    steps: int = Field(default=400, ge=1, description="most search steps per point")
    thief: Literal["finetune", "extract"] = Field(
        default="finetune",
        description="finetune: the copied weights fine-tuned on the thief's data; extract: a "
        "surrogate trained on the API's answers (defcon.risks.model_theft)",
    )
    finetune_epochs: int = Field(
        default=5, ge=1, description="finetune: epochs over the thief's data, all layers"
    )


def movable_columns(dataset: Dataset) -> torch.Tensor:
    """A mask of the input features the search may change: numeric columns for tabular data
    (a one-hot category cannot move by a small step and stay valid), every feature for images."""
    width = dataset.train.x[0].numel()
    if not dataset.feature_groups:
        return torch.ones(width, dtype=torch.bool)
    mask = torch.zeros(width, dtype=torch.bool)
    for group in dataset.feature_groups:
        if not group.categorical:
            mask[list(group.columns)] = True
    return mask


def ipguard_objective(logits: torch.Tensor, own: torch.Tensor, target: torch.Tensor, margin: float):
    """Per point: ReLU(Z_i − Z_j + k) + ReLU(max_{t≠i,j} Z_t − Z_i) (Cao et al., Eq. 2)."""
    rows = torch.arange(len(logits), device=logits.device)
    z_i, z_j = logits[rows, own], logits[rows, target]
    others = logits.clone()
    others[rows, own] = -torch.inf
    others[rows, target] = -torch.inf
    runner = others.max(1).values
    beyond = torch.relu(runner - z_i) if logits.shape[1] > 2 else torch.zeros_like(z_i)
    return torch.relu(z_i - z_j + margin) + beyond


def finetuned_copy(model: nn.Module, env: Environment, epochs: int) -> nn.Module:
    """The weights a thief copied (no serving wrapper), fine-tuned on its own labelled data."""
    stolen = copy.deepcopy(weights_of(model))
    profile = env.profile
    optimizer = torch.optim.Adam(stolen.parameters(), lr=profile.lr)
    seed = derived_seed(env.seed, "ipguard:thief")
    for _ in range(epochs):
        stolen.train()
        for x, y, _s in env.attacker_data.loader(profile.batch_size, shuffle=True, seed=seed):
            if len(y) < 2:  # BatchNorm needs two rows
                continue
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(stolen(x), y).backward()
            optimizer.step()
    stolen.eval()
    return stolen


class IPGuardFingerprint(PostTrainingDefense):
    """Boundary fingerprint kept by the owner; measured by a stolen copy's matching rate."""

    Config: ClassVar[type[DefenseConfig]] = IPGuardConfig
    config: IPGuardConfig

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """An unchanged copy: the fingerprint is the owner's, the model is not altered."""
        return copy.deepcopy(model)

    def fingerprint(self, owner: nn.Module, env: Environment) -> tuple[torch.Tensor, torch.Tensor]:
        """Points just across `owner`'s boundary and the labels `owner` gives them."""
        cfg, dataset = self.config, env.dataset
        if dataset.num_classes < 2:
            raise DefconError("ipguard_fingerprint needs at least two classes")
        train = dataset.train
        start = train.seeded_sample(cfg.candidates, derived_seed(env.seed, "ipguard:starts")).x
        flat = train.x.reshape(len(train), -1)
        low, high = flat.min(0).values, flat.max(0).values
        movable = movable_columns(dataset).float()
        if not bool(movable.any()):
            raise DefconError(
                f"ipguard_fingerprint moves numeric input columns; '{dataset.name}' has none"
            )
        owner = weights_of(owner)
        was_training = owner.training
        owner.eval()
        x = start.reshape(len(start), -1).clone()  # on the CPU: a placed model answers there
        own = predict(owner, start)
        generator = torch.Generator().manual_seed(derived_seed(env.seed, "ipguard:targets"))
        shift = torch.randint(1, dataset.num_classes, (len(x),), generator=generator)
        target = (own + shift) % dataset.num_classes
        for _ in range(cfg.steps):
            x.requires_grad_(True)
            objective = ipguard_objective(
                owner(x.reshape(len(x), *start.shape[1:])), own, target, cfg.margin
            )
            active = objective > 0
            if not bool(active.any()):
                break
            (gradient,) = torch.autograd.grad(objective.sum(), x)
            with torch.no_grad():
                move = cfg.step * gradient.sign() * movable * active.float().unsqueeze(1)
                x = torch.minimum(torch.maximum(x - move, low), high)
        owner.train(was_training)
        x = x.detach().reshape(len(x), *start.shape[1:])
        labels = predict(owner, x)
        reached = torch.nonzero(labels == target).flatten()[: cfg.points]
        if len(reached) < MIN_POINTS:
            raise DefconError(
                f"ipguard_fingerprint found {len(reached)} of {cfg.candidates} boundary points "
                f"on '{dataset.name}' (at least {MIN_POINTS} are needed): raise candidates, "
                "steps or step"
            )
        return x[reached], labels[reached]

    def suspect(self, model: nn.Module, env: Environment) -> nn.Module:
        """What is verified: the thief's extracted copy where the defense is deployed, else an
        independent model (the false-accusation reading)."""
        if self.name not in env.deployed:
            return env.independent_model()
        if self.config.thief == "extract":
            return ModelTheft().steal(model, env)
        return finetuned_copy(model, env, self.config.finetune_epochs)

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """The suspect's matching rate on the owner's fingerprint of `model`."""
        points, labels = self.fingerprint(model, env)
        matched = predict(self.suspect(model, env), points) == labels
        return {"fingerprint_match": float(matched.float().mean())}
