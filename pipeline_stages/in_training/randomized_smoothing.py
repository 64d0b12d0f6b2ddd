"""Randomized smoothing: train under Gaussian input noise, certify an L2 radius (mitigates evasion).

Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019.
The deployed classifier is the *smoothed* one, g(x) = argmax_c P(f(x + δ) = c) with
δ ~ N(0, σ²I) and f the base classifier. If the top class has probability p_A ≥ p̲_A > 1/2, g's
prediction provably cannot change inside the L2 ball of radius σ·Φ⁻¹(p̲_A) around x (their
Theorem 1 with p_B = 1 − p_A). The certificate holds for any f, but is only large when f is
right under noise, so the base classifier is trained on noisy inputs.

Mechanism: the *batch_transform* slot replaces every training input x by x + δ, δ ~ N(0, σ²I),
not clamped (Cohen et al. train, and certify, on the unclamped Gaussian). Replacing rather than
appending keeps one example per sampled record, so a privacy wrapper's per-sample clipping and
accounting (DP-SGD) stay valid; the noise comes from a generator of its own, seeded per training
run, so another defense drawing from torch's global generator does not change it.

Data kinds: images and tabular data. Both are in [0, 1] (tabular: min-max scaled numerics and
one-hot categoricals), the certificate is a fact about L2 balls in R^d whatever the features
mean, and the evasion threat the catalog measures on tabular data (adversarial training, the
audit) is likewise a norm ball on these scaled columns. On tabular data the default radius (0.25)
is below the L2 distance between two one-hot categories (√2): the certificate covers changes of
numeric attributes, not of a category.

Effectiveness: ``certified_accuracy``, Cohen et al.'s CERTIFY on a seeded subset of the test
split, with the *served* model as the base classifier f (whatever the pipeline puts in front of
its weights answers the noisy queries). Per point: ``n0`` noisy predictions choose the top class
ĉ_A; ``n`` further, independent ones count it; p̲_A is the one-sided (1 − α) Clopper–Pearson
lower bound on its probability (scipy's exact binomial interval); abstain when p̲_A < 1/2, else
the certified radius is σ·Φ⁻¹(p̲_A). A point counts when the smoothed prediction is its label and
its radius is at least ``radius``. Class-balanced like adversarial training's robust accuracy (the
mean over classes of that share), so a constant predictor scores at most 1/classes. The noise is
drawn from a generator seeded by (seed, defense), so every model measured on one seed sees the
same points and the same noise (common random numbers for the paired comparisons).

Defaults: σ = 0.25 and radius 0.25 (= σ: p̲_A ≥ Φ(1) ≈ 0.84 is needed), Cohen et al.'s smallest
noise level and smallest tabulated radius (Table 1, CIFAR-10), chosen before any measurement;
α = 0.001 as theirs. Samples follow the profile, because the base classifier is queried
points·(n0 + n) times: quick 200 points · (32 + 256) (≈ 58k forward passes, about half a minute
for the Fashion-MNIST CNN on 2 cores; with n = 256 a point needs ≥ 233 of 256 votes for
radius σ), tiny 100 · (16 + 128), paper 500 · (100 + 10,000) (Cohen et al.: 500 · (100 +
100,000)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from pydantic import Field
from scipy.stats import binomtest, norm
from torch import nn

from defcon.engine.data import class_balanced_mean
from defcon.engine.defense import DefenseConfig, Environment, InTrainingDefense
from defcon.engine.models import predict
from defcon.engine.seeds import derived_seed

if TYPE_CHECKING:
    from defcon.engine.training import TrainingRun

ABSTAIN = -1
ROWS_PER_FORWARD = 4096  # noisy copies pushed through the model at once while certifying


class Budget(NamedTuple):
    """How many test points are certified and with how many noisy samples each."""

    points: int
    n0: int
    n: int


# Keyed by profile name; a profile of another name (a user's) gets the quick budget.
BUDGETS: dict[str, Budget] = {
    "tiny": Budget(points=100, n0=16, n=128),
    "quick": Budget(points=200, n0=32, n=256),
    "paper": Budget(points=500, n0=100, n=10_000),
}


class RandomizedSmoothingConfig(DefenseConfig):
    """Noise level, certified radius and certification budget; None: from the profile."""

    sigma: float = Field(
        default=0.25, gt=0, description="σ of the Gaussian noise, in training and certification"
    )
    radius: float = Field(
        default=0.25, ge=0, description="L2 radius at which certified accuracy is measured"
    )
    alpha: float = Field(
        default=0.001, gt=0, lt=0.5, description="certification failure probability (Cohen: 0.001)"
    )
    eval_samples: int | None = Field(default=None, ge=1, description="test points certified")
    n0: int | None = Field(default=None, ge=1, description="noisy samples choosing the top class")
    n: int | None = Field(default=None, ge=1, description="noisy samples bounding its probability")


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) lower confidence bound on a binomial proportion (Clopper & Pearson 1934):
    the lower end of the exact two-sided interval at confidence 1 − 2α, as in Cohen et al.'s code."""
    interval = binomtest(successes, trials).proportion_ci(
        confidence_level=1 - 2 * alpha, method="exact"
    )
    return float(interval.low)


def certify_counts(
    selection: torch.Tensor, estimation: torch.Tensor, sigma: float, alpha: float
) -> tuple[int, float]:
    """CERTIFY from vote counts: (class, certified L2 radius), or (ABSTAIN, 0.0).

    `selection` (from n0 samples) picks the class, `estimation` (n independent samples) bounds its
    probability, so the bound is not biased by having chosen the class on the same votes.
    """
    top = int(selection.argmax())
    p_lower = clopper_pearson_lower(int(estimation[top]), int(estimation.sum()), alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    return top, sigma * float(norm.ppf(p_lower))


class RandomizedSmoothing(InTrainingDefense):
    """Gaussian-noise training (batch_transform), measured by certified accuracy at a radius."""

    Config: ClassVar[type[DefenseConfig]] = RandomizedSmoothingConfig
    config: RandomizedSmoothingConfig

    # ------------------------------------------------------------------ settings

    def budget(self, env: Environment) -> Budget:
        """Points and samples for `env`'s profile, with the config's overrides."""
        default = BUDGETS.get(env.profile.name, BUDGETS["quick"])
        return Budget(
            points=self.config.eval_samples or default.points,
            n0=self.config.n0 or default.n0,
            n=self.config.n or default.n,
        )

    # ------------------------------------------------------------------ training hook

    def _generator(self, run: TrainingRun) -> torch.Generator:
        seed = derived_seed(run.env.seed, f"{self.name}:train-noise")
        return run.state(self.name, lambda: torch.Generator().manual_seed(seed))

    def transform_batch(
        self, run: TrainingRun, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every input replaced by x + δ, δ ~ N(0, σ²I) (a new tensor; x is not modified)."""
        noise = torch.randn(x.shape, generator=self._generator(run), dtype=x.dtype)
        return x + self.config.sigma * noise.to(x.device), y, s

    # ------------------------------------------------------------------ effectiveness

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Class-balanced certified accuracy at `radius` of the model smoothed with σ."""
        return {"certified_accuracy": self.certified_accuracy(model, env)}

    def certify(
        self, model: nn.Module, x: torch.Tensor, num_classes: int, env: Environment
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cohen et al.'s CERTIFY for every row of `x`: (classes with ABSTAIN, radii)."""
        budget = self.budget(env)
        sigma, alpha = self.config.sigma, self.config.alpha
        generator = torch.Generator().manual_seed(derived_seed(env.seed, f"{self.name}:certify"))
        was_training = model.training
        classes, radii = [], []
        per_chunk = max(1, ROWS_PER_FORWARD // (budget.n0 + budget.n))
        try:
            for chunk in x.split(per_chunk):
                selection = self._votes(model, chunk, budget.n0, num_classes, generator)
                estimation = self._votes(model, chunk, budget.n, num_classes, generator)
                for picked, counted in zip(selection, estimation, strict=True):
                    label, radius = certify_counts(picked, counted, sigma, alpha)
                    classes.append(label)
                    radii.append(radius)
        finally:
            model.train(was_training)
        return torch.tensor(classes, dtype=torch.long), torch.tensor(radii, dtype=torch.float64)

    def _votes(
        self,
        model: nn.Module,
        x: torch.Tensor,
        samples: int,
        num_classes: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Per row of `x`, how often the model predicts each class on `samples` noisy copies."""
        copies = x.repeat_interleave(samples, dim=0)
        noise = torch.randn(copies.shape, generator=generator, dtype=copies.dtype)
        predicted = predict(model, copies + self.config.sigma * noise, batch_size=ROWS_PER_FORWARD)
        predicted = predicted.reshape(len(x), samples)
        counts = torch.zeros(len(x), num_classes, dtype=torch.long)
        return counts.scatter_add_(1, predicted, torch.ones_like(predicted))

    def certified_accuracy(self, model: nn.Module, env: Environment) -> float:
        """Mean over classes of the share of test points certified correct at `radius`."""
        test = env.dataset.test.seeded_sample(
            self.budget(env).points, derived_seed(env.seed, self.name)
        )
        if len(test) == 0:
            return float("nan")
        classes, radii = self.certify(model, test.x, env.dataset.num_classes, env)
        return class_balanced_mean((classes == test.y) & (radii >= self.config.radius), test.y)
