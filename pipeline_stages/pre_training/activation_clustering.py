"""Poisoned-example filter by activation clustering (Chen et al., AAAI SafeAI 2019).

Mechanism (the paper's): a network trained on backdoored data classifies a triggered input as
the target label for a different reason than a genuine one (the trigger, not the class's own
features), so within the target label the last hidden layer's activations fall into two groups.
Train a network on the (possibly poisoned) training split; per label, take its rows' last hidden
layer activations (the input of `model.head`), reduce them to `components` dimensions (the paper
uses ICA to 10), split them with 2-means, and call the smaller cluster poisoned when its relative
size is at most `size_threshold` (the paper's relative-size analysis; 0.35 is the default of the
reference implementation in IBM's Adversarial Robustness Toolbox, `ActivationDefence`, which
Chen et al. released). The suspected rows are removed and the served model trains on the rest.

One departure: the defender's clean rows, not the size, decide which cluster is the poison.
The relative-size rule assumes poison is a minority of its label; on ten balanced classes a
poisoning rate of 10 % puts about as many poisoned rows in the target label as clean ones, and
the rule then calls the clean half "small" and keeps the poison, or 2-means splits the poison and
the rule removes only part of it. And a label without poison is also split in two, so when its
natural modes are unbalanced the rule removes a clean mode. The defender holds clean rows of each
label (`Environment.attacker_data`, the held-out half of the validation split that
`poison_filter` and `backdoor_finetuning` use too; never trained on): they fall into a natural
mode about as often as the training rows do, and into a cluster of triggered rows almost never,
since clean data carries no trigger. So the cluster the clean rows avoid most (their share in
it over the training rows' share) is removed when that ratio is at most `clean_ratio`, whatever
its size, and the label's remaining rows are split again (up to `max_splits` times) until the
clean rows avoid no cluster. This is Chen et al.'s own premise (triggered rows are activated
for a different reason than genuine ones) read with a clean reference, close to their
exclusionary reclassification, which also judges a cluster by clean data. A label with fewer
than `min_clean` clean rows, or `clean_ratio=None`, falls back to the paper's rule: one split,
the smaller cluster removed when its share is at most `size_threshold`.

The filter's network is defcon's default one for the data, trained by the project's recipe with a
derived seed (as `poison_filter` trains its own), so any served model works; the result for an
identical input is kept within a process, so standalone and combined arms train it once.

Effectiveness and diagnostics are `poison_filter`'s: the attack success rate of the active
poisoner; `poison_removed` and `clean_removed` (reported, not judged).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning

from defcon.engine.data import Split
from defcon.engine.defense import DefenseConfig, Environment
from defcon.engine.seeds import derived_seed
from pipeline_stages.pre_training.poison_filter import PoisonFilter, rows_left


class ActivationClusteringConfig(DefenseConfig):
    """Settings of activation clustering (defaults: see the module docstring)."""

    reduction: Literal["ica", "pca"] = Field(
        default="ica", description="dimensionality reduction before clustering (the paper: ICA)"
    )
    components: int = Field(
        default=10, ge=1, description="dimensions kept by the reduction (the paper: 10)"
    )
    size_threshold: float = Field(
        default=0.35,
        gt=0,
        lt=0.5,
        description="the paper's rule (without clean rows): the smaller of a label's two "
        "clusters is removed when it holds at most this share of the label's rows (ART's "
        "ActivationDefence default)",
    )
    clean_ratio: float | None = Field(
        default=0.5,
        ge=0,
        description="remove the cluster the defender's clean rows of the label avoid most, when "
        "they fall in it at most this many times as often as the training rows (None: the "
        "paper's relative-size rule)",
    )
    max_splits: int = Field(
        default=3,
        ge=1,
        description="splits of one label at most: after a removal the rest is split again",
    )
    min_clean: int = Field(
        default=10, ge=1, description="clean rows of a label needed to judge by them"
    )
    min_rows: int = Field(
        default=20, ge=4, description="labels with fewer training rows are not clustered"
    )
    epochs: int | None = Field(
        default=None, ge=1, description="epochs of the filter's network (None: the profile's)"
    )


def two_clusters(
    rows: np.ndarray, reduction: str, components: int, seed: int
) -> tuple[np.ndarray, object, KMeans]:
    """2-means cluster ids of `rows` after the reduction, and the fitted reducer and k-means
    (to place other rows, the defender's clean ones, in the same clusters)."""
    dims = max(1, min(components, rows.shape[1], len(rows) - 1))
    if reduction == "ica":
        reducer: PCA | FastICA = FastICA(
            n_components=dims, whiten="unit-variance", max_iter=400, random_state=seed
        )
    else:
        reducer = PCA(n_components=dims, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # an unconverged ICA still reduces
        reduced = reducer.fit_transform(rows)
    kmeans = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(reduced)
    return kmeans.labels_, reducer, kmeans


@dataclass(frozen=True)
class LabelSplit:
    """One label's 2-means split: cluster ids of its rows, the smaller cluster and its share of
    the label, and the fitted reducer and k-means that place other rows in the same clusters."""

    assigned: np.ndarray
    small: int
    share: float
    reducer: object
    kmeans: KMeans

    def clean_shares(self, reference: np.ndarray) -> np.ndarray:
        """Share of the defender's clean rows `reference` that fall in each cluster."""
        reduced = self.reducer.transform(reference)  # type: ignore[attr-defined]
        placed = self.kmeans.predict(reduced)
        return np.bincount(placed, minlength=2) / len(reference)

    def most_avoided(self, reference: np.ndarray) -> tuple[int, float]:
        """The cluster the clean rows avoid most and their share in it over the training rows'
        (1: as often as the training rows; 0: never)."""
        train = np.bincount(self.assigned, minlength=2) / len(self.assigned)
        ratios = self.clean_shares(reference) / train
        cluster = int(np.argmin(ratios))
        return cluster, float(ratios[cluster])


def split_label(rows: np.ndarray, reduction: str, components: int, seed: int) -> LabelSplit:
    """The 2-means split of one label's representations `rows` (see `two_clusters`)."""
    assigned, reducer, kmeans = two_clusters(rows, reduction, components, seed)
    sizes = np.bincount(assigned, minlength=2)
    small = int(np.argmin(sizes))
    return LabelSplit(assigned, small, float(sizes[small] / len(rows)), reducer, kmeans)


@dataclass(frozen=True)
class SplitStep:
    """One split of a label's remaining rows and what it decided: `rows` are indices into the
    label's rows, `suspect` the cluster judged (the one the clean rows avoid most, or the
    smaller under the paper's rule), `removed` whether it was, `clean_ratio` the clean rows'
    share in it over the training rows' (NaN under the paper's rule)."""

    rows: np.ndarray
    halves: LabelSplit
    suspect: int
    removed: bool
    clean_ratio: float

    @property
    def suspect_rows(self) -> np.ndarray:
        return self.rows[self.halves.assigned == self.suspect]

    @property
    def share(self) -> float:
        """The suspect cluster's share of the rows split."""
        return float(np.mean(self.halves.assigned == self.suspect))


def label_steps(
    rows: np.ndarray, reference: np.ndarray, config: ActivationClusteringConfig, seed: int
) -> list[SplitStep]:
    """Split one label's representations `rows` and remove what the defender's clean rows of
    that label (`reference`) avoid, again on the rest, until they avoid nothing (see the module
    docstring); the paper's rule without enough clean rows or with `clean_ratio=None`."""
    clean_ratio = config.clean_ratio
    by_clean = clean_ratio is not None and len(reference) >= config.min_clean
    remaining = np.arange(len(rows))
    steps: list[SplitStep] = []
    for split in range(config.max_splits if by_clean else 1):
        if len(remaining) < config.min_rows:
            break
        split_seed = (seed + split) % 2**32  # sklearn's random_state range
        halves = split_label(rows[remaining], config.reduction, config.components, split_seed)
        if clean_ratio is not None and by_clean:
            suspect, ratio = halves.most_avoided(reference)
            removed = ratio <= clean_ratio
        else:
            suspect, ratio = halves.small, float("nan")
            removed = halves.share <= config.size_threshold
        steps.append(SplitStep(remaining, halves, suspect, removed, ratio))
        if not removed:
            break
        remaining = remaining[halves.assigned != suspect]
    return steps


class ActivationClustering(PoisonFilter):
    """Remove the activation clusters of each label that the defender's clean rows avoid;
    measured by ASR (as poison_filter)."""

    Config: ClassVar[type[DefenseConfig]] = ActivationClusteringConfig
    config: ActivationClusteringConfig  # type: ignore[assignment]

    def cluster_seed(self, env: Environment, label: int) -> int:
        """The seed of a label's reduction and 2-means (derived, so labels differ)."""
        return derived_seed(env.seed, f"{self.name}:cluster:{int(label)}")

    def kept_rows(self, split: Split, env: Environment) -> torch.Tensor:
        """Sorted indices of the rows of `split` outside every removed cluster."""
        reps, labels, clean_reps, clean_labels = self.labelled_representations(split, env)
        removed: list[np.ndarray] = []
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            if len(rows) < self.config.min_rows:
                continue
            steps = label_steps(
                reps[rows],
                clean_reps[clean_labels == label],
                self.config,
                self.cluster_seed(env, label),
            )
            removed += [rows[step.suspect_rows] for step in steps if step.removed]
        return rows_left(len(split), removed)
