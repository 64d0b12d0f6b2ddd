"""Backdoor-based dataset watermark, verified by a paired one-sided t-test.

Li et al., "Black-box Dataset Ownership Verification via Backdoor Watermarking", IEEE TIFS 2023:
before releasing a dataset, its owner poisons a small share of it with a secret trigger (here
salt "data_watermark", top-right corner: an image patch or a tabular region of feature groups,
disjoint from the BadNets poisoner's bottom-right one and the model watermark's top-left one;
tabular values are chosen so that an independent model is not pushed towards the target) and
relabels those samples to a secret target class. The
released samples replace the originals (the dataset keeps its size). A model trained on the data
learns the backdoor; an independent model does not.

Verification (the paper's probability-available setting): draw m test inputs whose true class is
not the target, query the suspect model on their benign and triggered versions, and take the
target-class probabilities P_b and P_w. Test H0: P_b + τ ≥ P_w against H1: P_b + τ < P_w with a
one-sided paired t-test (scipy.stats.ttest_rel(P_b, P_w − τ, alternative="less")); rejecting H0
at significance level α (default **α = 0.05**) claims that the suspect model was trained on the
watermarked data. The margin τ (default 0.2, as in the paper) keeps a model whose triggered
inputs are only slightly more often the target class from being accused.

Effectiveness: the detection rate, the share of T seeded trials (default 100, m = 30 each) in
which the test rejects H0 at level α. On an independent model it estimates the false-accusation
rate, which must stay near 0. All secrets are re-derived from (config, seed, dataset).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from scipy.stats import ttest_rel
from torch import nn

from defcon.engine.data import Split
from defcon.engine.defense import DefenseConfig, Environment
from defcon.engine.models import predict_proba
from defcon.engine.seeds import derived_seed
from pipeline_stages.pre_training.stamping import Corner, StampingConfig, StampingWatermark


class DataWatermarkConfig(StampingConfig):
    """Settings of the dataset watermark and of its ownership test."""

    fraction: float = Field(default=0.1, gt=0, lt=1, description="share of samples watermarked")
    corner: Corner = "top_right"
    trials: int = Field(default=100, ge=1, description="T: repeated ownership tests")
    samples: int = Field(default=30, ge=2, description="m: test inputs per trial")
    tau: float = Field(default=0.2, ge=0, lt=1, description="margin τ of H1: P_b + τ < P_w")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="significance level of the test")


class DataWatermark(StampingWatermark):
    """Poison a seeded share of the data with a secret trigger; verified by a paired t-test."""

    Config: ClassVar[type[DefenseConfig]] = DataWatermarkConfig
    config: DataWatermarkConfig

    def apply(self, train: Split, env: Environment) -> Split:
        """A copy of `train` whose seeded `fraction` of samples carry the watermark."""
        target = self.target_class(env)
        chosen = self.chosen(train, target, env)
        x, y = train.x.clone(), train.y.clone()
        x[chosen] = self.trigger(env).stamp(x[chosen])
        y[chosen] = target
        return train.with_(x=x, y=y)

    def p_values(self, model: nn.Module, env: Environment) -> np.ndarray:
        """The p-value of each of the T seeded ownership trials on `model` (test split only)."""
        target = self.target_class(env)
        test = env.dataset.test
        pool = torch.nonzero(test.y != target).flatten()
        benign = predict_proba(model, test.x[pool])[:, target].double().numpy()
        marked = predict_proba(model, self.trigger(env).stamp(test.x[pool]))[:, target]
        marked = marked.double().numpy()
        rng = np.random.default_rng(derived_seed(env.seed, f"{self.name}:trials"))
        m = min(self.config.samples, len(pool))
        values = []
        for _ in range(self.config.trials):
            pick = rng.choice(len(pool), size=m, replace=False)
            with np.errstate(all="ignore"):
                result = ttest_rel(benign[pick], marked[pick] - self.config.tau, alternative="less")
            p = float(result.pvalue)
            values.append(1.0 if math.isnan(p) else p)  # zero variance, no evidence: no claim
        return np.asarray(values)

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Detection rate: share of T trials whose one-sided paired t-test rejects at α."""
        rejected = self.p_values(model, env) < self.config.alpha
        return {"detection_rate": float(rejected.mean())}
