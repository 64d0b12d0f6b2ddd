"""Fingerprinting by dataset inference (Maini, Yaghini & Papernot, ICLR 2021).

Mechanism. A model trained on a dataset has its training samples further from its decision
boundaries than samples it never saw; a stolen model (a copy, or one extracted or distilled from
the victim) inherits this "knowledge" of the owner's private data. The owner therefore measures,
on the suspect model, how far each of a few of its private samples and of some public unseen
samples are from the decision boundary, and tests whether the private ones are significantly
further.

Features (per sample, on the suspect model). The paper uses either black-box "blind walk"
distances or white-box "MinGD" distances. By default we use one white-box estimate, the first
DeepFool/MinGD step: the linearised distance to the nearest decision boundary,
min_j (f_y − f_j) / ‖∇ₓ(f_y − f_j)‖₂ over the three highest-scoring other classes j, through
arcsinh (negative when already misclassified). It costs a few gradient evaluations per sample, so
the test can use thousands of samples, which is what decides its power on small, well-
generalising models (there the membership signal is weak: AUC ≈ 0.52–0.55). The black-box blind
walk is available (`directions` > 0): along seeded random directions, walk outwards on a
geometric grid of step sizes and record the smallest perturbation (root-mean-square per input
feature) at which the prediction leaves the sample's label (0 if already misclassified, capped
above); its mean log distance is added as a feature. In our trials on digits, Fashion-MNIST and
Adult it cost 5–15× more and added noise rather than power, hence off by default.

What is verified: the copy a thief holds. A thief who copies the model holds its weights, not
the owner's prediction API, so the test runs on `weights_of(model)` (an output-watermark API in
front of the weights neither helps nor hinders it).

A logistic-regression "confidence regressor" is fitted on the suspect's features of
owner-private samples (`env.members`: the original clean records the model was trained on, not
poisoned, watermarked or appended rows) labelled 1 and unseen samples (`env.calibration_data`)
labelled 0. The ownership test then scores disjoint private samples (not used for fitting) and
unseen test samples (`env.dataset.test`), and runs a one-sided Welch t-test that the private
scores are larger. Sample splitting keeps the test valid: for a model that never saw the owner's
data the regressor learns noise and the p-value is uniform on [0, 1] (mostly large). The test's
power needs a generalisation gap: a model that does not overfit its training data at all (train
≈ test accuracy) cannot be told from an independent one.

The metric is `ownership_log10_p` = min(10, −log10 p), the evidence in orders of magnitude
(higher is stronger; a tolerance of 1.0 is one order of magnitude). log p is computed as the
log survival function of Student's t at the Welch statistic with Welch's degrees of freedom, so
very small p-values do not underflow to 0. The cap: beyond p = 1e-10 more evidence changes nothing
in an ownership dispute, and uncapped values (hundreds on a large test) would let seeds differ
by amounts that mean nothing.

Undefended reading. Dataset inference is deployed only where the owner runs it
(`dataset_inference` in `env.deployed`). Without it, the owner's test is applied to an
independent model (`env.independent_model()`: the threat model's architecture trained on the
attacker's half of the validation data, which never saw the owner's data): the false-accusation
reading, which must be small (−log10 p below 1.3, i.e. p above 0.05, but for chance).

`apply` returns an unchanged copy: dataset inference does not alter the model, it is a
verification the owner can run on any suspect model at any time.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from scipy import special, stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from defcon.engine.data import Split
from defcon.engine.defense import DefenseConfig, Environment, PostTrainingDefense, weights_of
from defcon.engine.seeds import derived_seed

MAX_LOG10_P = 10.0  # p < 1e-10 decides a dispute as well as any smaller p


def t_log_sf_tail(t: float, df: float) -> float:
    """log P(T > t) for Student's t with `df` degrees of freedom and t > 0, where scipy's logsf
    underflows: P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t²), and
    I_x(a, b) = x^a (1 − x)^b ₂F₁(a + b, 1; a + 1; x) / (a B(a, b))."""
    a, b = df / 2, 0.5
    x = df / (df + t * t)
    return float(
        np.log(0.5) + a * np.log(x) + b * np.log1p(-x) - np.log(a) - special.betaln(a, b)
        + np.log(special.hyp2f1(a + b, 1.0, a + 1, x))
    )  # fmt: skip


def welch_log10_p(private: np.ndarray, unseen: np.ndarray, cap: float = MAX_LOG10_P) -> float:
    """min(cap, −log10 p) of the one-sided Welch t-test 'private > unseen', without underflow."""
    n1, n2 = len(private), len(unseen)
    v1, v2 = np.var(private, ddof=1) / n1, np.var(unseen, ddof=1) / n2
    if not np.isfinite(v1 + v2) or v1 + v2 <= 0:
        return 0.0  # no signal at all
    t = (np.mean(private) - np.mean(unseen)) / np.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    log_p = float(stats.t.logsf(t, df))
    if not np.isfinite(log_p) and t > 0:
        log_p = t_log_sf_tail(float(t), float(df))
    return float(min(cap, max(0.0, -log_p / np.log(10))))


class DatasetInferenceConfig(DefenseConfig):
    """Settings of the blind-walk features and of the ownership test."""

    directions: int = Field(
        default=0, ge=0, description="random directions of the blind walk (0: no blind walk)"
    )
    grid_points: int = Field(default=16, ge=2, description="step sizes tried along a direction")
    min_step: float = Field(default=0.01, gt=0, description="smallest RMS perturbation tried")
    max_step: float = Field(default=2.0, gt=0, description="largest RMS perturbation tried")
    fit_samples: int = Field(
        default=1000, ge=10, description="private and unseen samples (each) fitting the regressor"
    )
    test_samples: int = Field(
        default=4000,
        ge=5,
        description="private and unseen samples (each, at most) in the ownership test",
    )


@torch.no_grad()
def blind_walk_distances(
    model: nn.Module, split: Split, config: DatasetInferenceConfig, seed: int
) -> np.ndarray:
    """Per sample and direction: the smallest RMS perturbation on the grid that changes the
    model's prediction away from the sample's label (0 if already wrong, capped above)."""
    model.eval()
    n, k = len(split), config.directions
    generator = torch.Generator().manual_seed(seed)
    flat = split.x.reshape(n, -1)
    directions = torch.randn(n, k, flat.shape[1], generator=generator)
    directions = directions / directions.pow(2).mean(-1, keepdim=True).sqrt()  # RMS 1 per feature
    grid = np.geomspace(config.min_step, config.max_step, config.grid_points)
    distance = torch.full((n, k), float(config.max_step * grid[-1] / grid[-2]))
    labels = split.y
    predicted = torch.cat([model(c).argmax(1) for c in split.x.split(1024)])
    distance[predicted != labels] = 0.0
    open_ = distance > 0  # (sample, direction) pairs still inside their label's region
    for step in grid:
        index = torch.nonzero(open_)
        if len(index) == 0:
            break
        points = flat[index[:, 0]] + float(step) * directions[index[:, 0], index[:, 1]]
        points = points.reshape(len(index), *split.x.shape[1:])
        out = torch.cat([model(c).argmax(1) for c in points.split(2048)])
        flipped = out != labels[index[:, 0]]
        hit = index[flipped]
        distance[hit[:, 0], hit[:, 1]] = float(step)
        open_[hit[:, 0], hit[:, 1]] = False
    return distance.numpy()


def linear_distances(model: nn.Module, split: Split, candidates: int = 3) -> np.ndarray:
    """Per sample: DeepFool's first-order distance to the nearest decision boundary,
    min_j (f_y − f_j) / ‖∇ₓ(f_y − f_j)‖₂ over the `candidates` highest-scoring classes j ≠ y
    (negative when the sample is already on another class's side)."""
    model.eval()
    out = []
    for x, y in zip(split.x.split(256), split.y.split(256), strict=True):
        x = x.clone().requires_grad_(True)
        logits = model(x)
        own = logits.gather(1, y[:, None])[:, 0]
        others = logits.detach().scatter(1, y[:, None], -torch.inf)
        count = min(candidates, logits.shape[1] - 1)
        best = torch.full((len(x),), torch.inf)
        for j in others.topk(count, dim=1).indices.T:
            margin = own - logits.gather(1, j[:, None])[:, 0]
            (grad,) = torch.autograd.grad(margin.sum(), x, retain_graph=True)
            norm = grad.reshape(len(x), -1).norm(dim=1).clamp(min=1e-8)
            best = torch.minimum(best, (margin / norm).detach())
        out.append(best)
    return torch.cat(out).numpy()


class DatasetInference(PostTrainingDefense):
    """Ownership verification: does the suspect model know the owner's private samples?"""

    Config: ClassVar[type[DefenseConfig]] = DatasetInferenceConfig

    config: DatasetInferenceConfig

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """The model unchanged (a copy): dataset inference verifies, it does not modify."""
        return copy.deepcopy(model)

    def _samples(self, split: Split, count: int, salt: str, seed: int) -> np.ndarray:
        rng = np.random.default_rng(derived_seed(seed, f"dataset_inference:{salt}"))
        return rng.permutation(len(split))[: min(count, len(split))]

    def _features(self, model: nn.Module, split: Split, salt: str, seed: int) -> np.ndarray:
        """Distance-to-boundary features per sample (see the module docstring)."""
        columns = [np.arcsinh(linear_distances(model, split))]
        if self.config.directions > 0:
            walk_seed = derived_seed(seed, f"dataset_inference:walk:{salt}")
            walk = blind_walk_distances(model, split, self.config, walk_seed)
            columns.append(np.log(np.maximum(walk, self.config.min_step / 2)).mean(1))
        return np.stack(columns, 1)

    def suspect(self, model: nn.Module, env: Environment) -> nn.Module:
        """What the test reads: the weights a thief holds where the defense is deployed, else an
        independent model (the false-accusation reading)."""
        if self.name in env.deployed:
            return weights_of(model)
        return env.independent_model()

    def scores(self, model: nn.Module, env: Environment) -> tuple[np.ndarray, np.ndarray]:
        """Regressor scores of held-out private samples and of unseen test samples on `model`."""
        cfg = self.config
        private = env.members
        order = self._samples(private, len(private), "private", env.seed)
        n_fit = min(cfg.fit_samples, len(order) // 2)
        fit_private = private.subset(order[:n_fit])
        test_private = private.subset(order[n_fit : n_fit + cfg.test_samples])
        unseen, test = env.calibration_data, env.dataset.test
        fit_unseen = unseen.subset(self._samples(unseen, cfg.fit_samples, "unseen", env.seed))
        test_unseen = test.subset(self._samples(test, cfg.test_samples, "test", env.seed))

        x_fit = np.concatenate([
            self._features(model, fit_private, "fit_private", env.seed),
            self._features(model, fit_unseen, "fit_unseen", env.seed),
        ])  # fmt: skip
        y_fit = np.concatenate([np.ones(len(fit_private)), np.zeros(len(fit_unseen))])
        regressor = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        regressor.fit(x_fit, y_fit)
        score_private = regressor.decision_function(
            self._features(model, test_private, "test_private", env.seed)
        )
        score_unseen = regressor.decision_function(
            self._features(model, test_unseen, "test_unseen", env.seed)
        )
        return score_private, score_unseen

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """min(10, −log10 p) of the one-sided Welch t-test 'private scores > unseen scores' on
        the suspect (see the module docstring)."""
        score_private, score_unseen = self.scores(self.suspect(model, env), env)
        return {"ownership_log10_p": welch_log10_p(score_private, score_unseen)}
