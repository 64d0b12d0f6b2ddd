"""An empirical lower bound on ε from a one-run canary audit, shown beside the claimed ε.

Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023,
Theorem 5.2: m canaries are each included with probability 1/2; the auditor guesses r of them
(abstaining on the rest) and W counts correct guesses. If training is (ε, δ)-DP then for all v
P[W ≥ v] ≤ P[W̃ ≥ v] + 2mδ · max_{1≤i≤m} (1/i) P[v > W̃ ≥ v − i],  W̃ ~ Binomial(r, e^ε/(1+e^ε)).
The bound reported is the largest ε this inequality rejects at confidence 1 − β for the observed
W: any ε below it would make the observed guessing accuracy less likely than β.
δ handling: the δ term is added exactly as stated (it only weakens the bound); with δ = 0 it is
the pure-DP binomial tail of the paper's Proposition 5.1.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom


def tail_bound(epsilon: float, correct: int, guesses: int, canaries: int, delta: float) -> float:
    """f(v) of Theorem 5.2: an upper bound on P[W ≥ correct] under (ε, δ)-DP."""
    p = float(np.exp(epsilon) / (1 + np.exp(epsilon))) if epsilon < 700 else 1.0
    tail = float(binom.sf(correct - 1, guesses, p))  # P[W̃ ≥ v]
    if delta <= 0:
        return tail
    cdf = binom.cdf(np.arange(-1, guesses + 1), guesses, p)  # cdf[k + 1] = P[W̃ ≤ k]

    def window(i: int) -> float:  # P[v > W̃ ≥ v − i] = P[W̃ ≤ v−1] − P[W̃ ≤ v−i−1]
        hi, lo = min(correct - 1, guesses), correct - i - 1
        if hi < 0:
            return 0.0
        return float(cdf[hi + 1] - (cdf[lo + 1] if lo >= 0 else 0.0))

    worst = max(window(i) / i for i in range(1, canaries + 1))
    return tail + 2 * canaries * delta * worst


def epsilon_lower_bound(
    correct: int, guesses: int, canaries: int, delta: float = 0.0, beta: float = 0.05
) -> float:
    """Largest ε rejected at confidence 1 − β by `correct` right guesses out of `guesses`
    (0 when nothing is rejected). Bisection: f is increasing in ε."""
    if guesses <= 0 or correct <= guesses / 2:
        return 0.0
    if tail_bound(0.0, correct, guesses, canaries, delta) > beta:
        return 0.0
    low, high = 0.0, 50.0
    for _ in range(60):
        mid = (low + high) / 2
        if tail_bound(mid, correct, guesses, canaries, delta) <= beta:
            low = mid
        else:
            high = mid
    return low


def audit_from_scores(
    scores: np.ndarray, included: np.ndarray, guesses: int, delta: float = 0.0, beta: float = 0.05
) -> float:
    """Guess "in" for the `guesses/2` highest-scoring canaries and "out" for the lowest as many,
    abstain on the rest, and return the ε lower bound from the resulting accuracy."""
    order = np.argsort(scores)
    half = max(1, guesses // 2)
    right = int(included[order[-half:]].sum() + (~included[order[:half]]).sum())
    return epsilon_lower_bound(right, 2 * half, len(scores), delta, beta)
