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

One departure, the clean gate. A label without poison is also split in two by 2-means, and when
its natural modes are unbalanced the relative-size rule would remove a clean mode. The defender
holds clean rows of each label (`Environment.attacker_data`, the held-out half of the
validation split that `poison_filter` and `backdoor_finetuning` use too; never trained on): they
fall into a natural mode about as often as the training rows do, and into a cluster of triggered
rows almost never, since clean data carries no trigger. A small cluster is therefore removed only
when the defender's clean rows of that label land in it at most `clean_ratio` times as often as
the training rows do (skipped for a label with fewer than `min_clean` clean rows).
`clean_ratio=None` restores the paper's rule.

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
        description="the smaller of a label's two clusters is suspected when it holds at most "
        "this share of the label's rows (ART's ActivationDefence default)",
    )
    clean_ratio: float | None = Field(
        default=0.5,
        ge=0,
        description="remove a suspected cluster only if the defender's clean rows of the label "
        "fall in it at most this many times as often as the training rows (None: the paper)",
    )
    min_clean: int = Field(
        default=10, ge=1, description="clean rows of a label needed for the clean gate"
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

    def clean_share(self, reference: np.ndarray) -> float:
        """Share of the defender's clean rows `reference` that fall in the smaller cluster."""
        reduced = self.reducer.transform(reference)  # type: ignore[attr-defined]
        return float(np.mean(self.kmeans.predict(reduced) == self.small))


def split_label(rows: np.ndarray, reduction: str, components: int, seed: int) -> LabelSplit:
    """The 2-means split of one label's representations `rows` (see `two_clusters`)."""
    assigned, reducer, kmeans = two_clusters(rows, reduction, components, seed)
    sizes = np.bincount(assigned, minlength=2)
    small = int(np.argmin(sizes))
    return LabelSplit(assigned, small, float(sizes[small] / len(rows)), reducer, kmeans)


class ActivationClustering(PoisonFilter):
    """Remove the small activation cluster of each label; measured by ASR (as poison_filter)."""

    Config: ClassVar[type[DefenseConfig]] = ActivationClusteringConfig
    config: ActivationClusteringConfig  # type: ignore[assignment]

    def cluster_seed(self, env: Environment, label: int) -> int:
        """The seed of a label's reduction and 2-means (derived, so labels differ)."""
        return derived_seed(env.seed, f"{self.name}:cluster:{int(label)}")

    def kept_rows(self, split: Split, env: Environment) -> torch.Tensor:
        """Sorted indices of the rows of `split` outside every removed cluster."""
        cfg = self.config
        reps, labels, clean_reps, clean_labels = self.labelled_representations(split, env)
        removed: list[np.ndarray] = []
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            if len(rows) < cfg.min_rows:
                continue
            halves = split_label(
                reps[rows], cfg.reduction, cfg.components, self.cluster_seed(env, label)
            )
            if halves.share > cfg.size_threshold:
                continue
            reference = clean_reps[clean_labels == label]
            if (
                cfg.clean_ratio is not None
                and len(reference) >= cfg.min_clean
                and halves.clean_share(reference) > cfg.clean_ratio * halves.share
            ):
                continue  # the clean population has this mode too: not the poison
            removed.append(rows[halves.assigned == halves.small])
        return rows_left(len(split), removed)
