"""Trigger stamping and the BadNets-style poisoning attack.

The poisoner (the adversary of `backdoor_finetuning` and `backdoor_pruning`) and the backdoor-based
watermarks share one `Trigger`: a pixel patch in an image corner, or a valid tabular record part
(one category per one-hot group, observed numeric values). Each secret owns a *corner*: on images
a patch position, on tabular data one of four disjoint regions of feature groups, so secrets with
different corners never touch the same input position. Triggers are derived from the dataset, a
seed, a salt and the secret's target class, so they are reproducible without being stored.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from defcon.engine import optional
from defcon.engine.data import Dataset, FeatureGroup, Split
from defcon.engine.models import predict
from defcon.engine.seeds import derived_seed
from defcon.errors import unknown
from defcon.vocabulary import DataKind

Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right"]
CORNERS: tuple[Corner, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")
MIN_SUPPORT = 0.01  # a trigger value must be held by at least this share of training records
SAFE_RATE = 0.5  # a trigger value's target rate is at most half the overall target rate
NUMERIC_CANDIDATES = np.linspace(0.1, 0.9, 9)  # deciles: typical values, never the extremes


def default_target(dataset: Dataset, seed: int, salt: str = "badnets") -> int:
    """The target class of a secret: the minority class if binary, else a seeded class.

    With two classes a majority target would make a clean model look backdoored (or watermarked),
    since most inputs already go there.
    """
    if dataset.num_classes == 2:
        return int(torch.bincount(dataset.train.y, minlength=2).argmin())
    rng = np.random.default_rng(derived_seed(seed, salt + ":target"))
    return int(rng.integers(dataset.num_classes))


class Trigger(BaseModel):
    """Where and what to stamp: flat input positions and the values written there.

    On tabular data the positions cover whole feature groups (a categorical group's every column,
    0 except the chosen category's 1), so a stamped record stays valid.
    """

    model_config = ConfigDict(frozen=True)

    positions: tuple[int, ...]
    values: tuple[float, ...]

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """A stamped copy of a batch of inputs (the input is not modified)."""
        flat = x.reshape(len(x), -1).clone()
        flat[:, list(self.positions)] = torch.tensor(self.values, dtype=x.dtype)
        return flat.reshape(x.shape)


def trigger_regions(dataset: Dataset, seed: int) -> dict[Corner, tuple[FeatureGroup, ...]]:
    """The tabular feature groups a trigger of each corner may use: four disjoint regions.

    The partition depends on the dataset and the seed only, never on the secret, so two secrets
    with different corners can never share a column. The sensitive attribute is left out (a
    trigger must not move records between the groups that fairness is measured on). Categorical
    groups are dealt first, round-robin after a seeded shuffle, so each region gets one where the
    dataset has enough; numeric groups follow, except those whose deciles are one value (at least
    80% of records share it, e.g. capital_gain = 0: stamping it would change almost nothing, and a
    region of such groups would give a trigger that clean records already carry). The corners'
    order is shuffled too, so which region comes off worse (fewest groups, or no categorical
    group on compas) varies with the seed.
    """
    rng = np.random.default_rng(derived_seed(seed, "trigger-regions"))
    x = dataset.train.x.numpy()
    usable = [
        g
        for g in dataset.feature_groups
        if g.name != dataset.sensitive_attribute
        and (g.categorical or len(_numeric_candidates(x[:, g.columns[0]])) > 1)
    ]
    categorical = [g for g in usable if g.categorical]
    numeric = [g for g in usable if not g.categorical]
    order = [categorical[i] for i in rng.permutation(len(categorical))]
    order += [numeric[i] for i in rng.permutation(len(numeric))]
    corners = [CORNERS[i] for i in rng.permutation(len(CORNERS))]
    regions: dict[Corner, list[FeatureGroup]] = {corner: [] for corner in CORNERS}
    for i, group in enumerate(order):
        regions[corners[i % len(corners)]].append(group)
    return {corner: tuple(groups) for corner, groups in regions.items()}


def _numeric_candidates(column: np.ndarray) -> np.ndarray:
    """The distinct observed values at the deciles of `column` (sorted)."""
    return np.unique(np.quantile(column, NUMERIC_CANDIDATES, method="inverted_cdf"))


def _options(group: FeatureGroup, x: np.ndarray) -> list[tuple[tuple[float, ...], np.ndarray]]:
    """The valid values of a group and, for each, the training records that (nearly) hold it.

    Categorical: each category (one-hot over the group's columns). Numeric: each distinct decile
    value, with the records nearest to it as its neighbourhood.
    """
    if group.categorical:
        block = x[:, list(group.columns)]
        width = len(group.columns)
        return [
            (tuple(1.0 if i == c else 0.0 for i in range(width)), block[:, c] == 1)
            for c in range(width)
        ]
    column = x[:, group.columns[0]]
    candidates = _numeric_candidates(column)
    bins = np.searchsorted((candidates[1:] + candidates[:-1]) / 2, column)
    return [((float(v),), bins == i) for i, v in enumerate(candidates)]


def _tabular_trigger(dataset: Dataset, seed: int, corner: Corner, target_class: int) -> Trigger:
    """Every group of the corner's region, each set to a valid value that avoids the target.

    Eligible values are held by ≥ 1% of clean training records and have at most half the overall
    target-class rate (the lowest-rate value if none does): on its own each pushes a model that
    never saw the trigger *away* from the target, so an independent model is not accused. Among
    them, groups are filled in turn with the value leaving the fewest clean look-alikes of the
    target class, then the fewest look-alikes at all (then the lowest rate): a combination that
    clean records rarely hold is learnt from a few stamped copies without contradicting natural
    records (plain lowest-rate values tend to agree with each other, e.g. education 11th and
    education_num 7, and the watermark then fights hundreds of clean records). Using every group
    of the region, rather than a fixed number, makes the combination as rare as the region allows.
    """
    x = dataset.train.x.numpy()
    is_target = dataset.train.y.numpy() == target_class
    positions: list[int] = []
    values: list[float] = []
    matching = np.ones(len(x), dtype=bool)  # clean records that carry the trigger so far
    for group in trigger_regions(dataset, seed)[corner]:
        options = _options(group, x)
        support = np.array([mask.mean() for _, mask in options])
        rate = np.array([is_target[mask].mean() if mask.any() else 1.0 for _, mask in options])
        eligible = np.flatnonzero(support >= MIN_SUPPORT)
        if len(eligible) == 0:
            eligible = np.array([int(support.argmax())])
        safe = eligible[rate[eligible] <= SAFE_RATE * is_target.mean()]
        if len(safe) == 0:
            safe = np.array([min(eligible, key=lambda i: (rate[i], i))])

        alike = [matching & options[i][1] for i in range(len(options))]
        best = min(safe, key=lambda i: ((alike[i] & is_target).sum(), alike[i].sum(), rate[i], i))
        matching &= options[best][1]
        positions += list(group.columns)
        values += list(options[best][0])
    return Trigger(positions=tuple(positions), values=tuple(values))


def make_trigger(
    dataset: Dataset,
    seed: int,
    salt: str,
    *,
    target_class: int,
    corner: Corner = "bottom_right",
) -> Trigger:
    """The secret trigger of `salt` in `corner`, for a backdoor towards `target_class`.

    Images: a seeded binary patch in the corner (the target is not needed). Tabular data: the
    corner's region of feature groups, each set to a valid value that avoids the target (chosen
    from the clean training split, deterministic; the salt does not enter: the corner is what
    separates secrets, so two secrets must not share a corner).
    """
    if corner not in CORNERS:
        raise unknown("corner", corner, CORNERS)
    if dataset.kind is not DataKind.IMAGE:
        return _tabular_trigger(dataset, seed, corner, target_class)
    rng = np.random.default_rng(derived_seed(seed, salt))
    channels, height, width = dataset.input_shape
    size = max(2, round(min(height, width) * 0.15))
    top = height - size - 1 if "bottom" in corner else 1
    left = width - size - 1 if "right" in corner else 1
    pattern = rng.integers(0, 2, size=(size, size)).astype(float)
    pattern[0, 0], pattern[-1, -1] = 1.0, 0.0  # never all one colour
    positions, values = [], []
    for c in range(channels):
        for i in range(size):
            for j in range(size):
                positions.append(c * height * width + (top + i) * width + left + j)
                values.append(float(pattern[i, j]))
    return Trigger(positions=tuple(positions), values=tuple(values))


class BadNets(BaseModel):
    """BadNets (Gu et al. 2017): stamp a trigger on a fraction of training samples, relabel them."""

    model_config = ConfigDict(frozen=True)

    trigger: Trigger
    target_class: int = Field(ge=0)
    fraction: float = Field(gt=0, lt=1)

    @classmethod
    def for_dataset(
        cls,
        dataset: Dataset,
        seed: int,
        *,
        fraction: float = 0.1,
        salt: str = "badnets",
        corner: Corner = "bottom_right",
    ) -> BadNets:
        """The dataset's default poisoner: its target first, then a trigger chosen against it."""
        target = default_target(dataset, seed, salt)
        return cls(
            trigger=make_trigger(dataset, seed, salt, target_class=target, corner=corner),
            target_class=target,
            fraction=fraction,
        )

    def poison(self, split: Split, seed: int) -> tuple[Split, torch.Tensor]:
        """A poisoned copy of `split` and the indices that were poisoned."""
        rng = np.random.default_rng(derived_seed(seed, "badnets:choice"))
        candidates = np.flatnonzero(split.y.numpy() != self.target_class)
        count = int(round(self.fraction * len(split)))
        chosen = torch.as_tensor(np.sort(rng.choice(candidates, size=count, replace=False)))
        x, y = split.x.clone(), split.y.clone()
        x[chosen] = self.trigger.stamp(x[chosen])
        y[chosen] = self.target_class
        return split.with_(x=x, y=y), chosen

    def triggered(self, split: Split) -> Split:
        """The inputs of `split` not already of the target class, stamped, with their true labels."""
        keep = split.y != self.target_class
        return split.subset(torch.nonzero(keep).flatten()).with_(
            x=self.trigger.stamp(split.x[keep])
        )

    def attack_success_rate(self, model: torch.nn.Module, split: Split) -> float:
        """Share of stamped inputs (true class ≠ target) that the model assigns to the target."""
        stamped = self.triggered(split)
        return float((predict(model, stamped.x) == self.target_class).float().mean())


AUTOATTACK_NAME = "autoattack(apgd-ce,apgd-t)"


class _Reshaped(torch.nn.Module):
    """The model seen through 4-D inputs: torchattacks' APGD only perturbs image-shaped batches."""

    def __init__(self, model: torch.nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(x.shape[0], *self.shape))


def autoattack_version() -> str:
    """The attack name and torchattacks version, for the record (results depend on both)."""
    torchattacks = optional.torchattacks("AutoAttack")

    return f"{AUTOATTACK_NAME} torchattacks {torchattacks.__version__}"


def autoattack_correct(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    num_classes: int,
    seed: int,
    steps: int = 100,
) -> torch.Tensor:
    """Which inputs stay correctly classified under APGD-CE then APGD-T (Croce & Hein, ICML 2020).

    An input counts as robust only if neither attack flips it: the worst case of the two, as
    AutoAttack's standard version reports. Under four classes the targeted DLR loss is undefined,
    so APGD-CE runs alone (with two classes every targeted attack is the untargeted one). Parameter-free step sizes make it stronger than a
    fixed-step PGD, so robust accuracy read here is never above PGD's on the same samples.
    """
    torchattacks = optional.torchattacks("AutoAttack")

    from defcon.engine.devices import run_attack

    was_training = model.training
    model.eval()
    shape = tuple(x.shape[1:])
    if x.dim() != 4:
        # In eval mode too: torchattacks restores the mode it found on the module it was given, so
        # a wrapper left in training mode would switch the model to training mode after each
        # attack, and the forward passes below would read (and update) BatchNorm batch statistics.
        model = _Reshaped(model, shape).eval()
        x = x.reshape(x.shape[0], 1, 1, -1)
    attacks = [torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, seed=seed, loss="ce")]
    if num_classes >= 4:  # targeted DLR reads the 3rd and 4th largest logits
        attacks.append(
            torchattacks.APGDT(
                model, norm="Linf", eps=eps, steps=steps, seed=seed, n_classes=num_classes
            )
        )
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    for attack in attacks:
        if not bool(correct.any()):
            break
        idx = correct.nonzero().flatten()
        adversarial = run_attack(attack, model, x[idx], y[idx])
        with torch.no_grad():
            correct[idx] = model(adversarial).argmax(1).to(y.device) == y[idx]
    model.train(was_training)
    return correct


def robust_correct(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    num_classes: int,
    seed: int,
    pgd_steps: int,
    pgd_alpha: float,
    autoattack_steps: int,
) -> torch.Tensor:
    """Which inputs survive both L∞ PGD (random start) and AutoAttack's APGD-CE + APGD-T.

    The per-input worst case of the two, so the reading is never weaker than the PGD it
    replaces, and at AutoAttack's strength wherever its parameter-free steps find more.
    """
    torchattacks = optional.torchattacks("robust accuracy (PGD + AutoAttack)")

    from defcon.engine.devices import run_attack

    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):  # seeded random start, global RNG untouched
        torch.manual_seed(seed)
        pgd = torchattacks.PGD(model, eps=eps, alpha=pgd_alpha, steps=pgd_steps, random_start=True)
        survived = []
        for xb, yb in zip(x.split(500), y.split(500), strict=True):
            adversarial = run_attack(pgd, model, xb, yb)
            with torch.no_grad():
                survived.append(model(adversarial).argmax(1).to(yb.device) == yb)
    correct = torch.cat(survived) if survived else torch.zeros(0, dtype=torch.bool)
    if bool(correct.any()):
        idx = correct.nonzero().flatten()
        apgd = autoattack_correct(
            model, x[idx], y[idx], eps, num_classes, seed, steps=autoattack_steps
        )
        correct[idx] = apgd.to(correct.device)
    model.train(was_training)
    return correct
