"""Uncertainty of a Δ on paired predictions: McNemar's exact test and a paired bootstrap interval.

Both sides saw the same samples, so the comparison is paired: only the samples where exactly one side
is right carry information (McNemar), and resampling samples keeps the pairs together (bootstrap).
"""
from __future__ import annotations

import numpy as np

BOOTSTRAP_ROUNDS = 2000
SEED = 0


def mcnemar_exact(reference_correct: np.ndarray, candidate_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value (binomial test on the discordant pairs)."""
    from scipy.stats import binomtest

    only_reference = int(np.sum(reference_correct & ~candidate_correct))
    only_candidate = int(np.sum(~reference_correct & candidate_correct))
    discordant = only_reference + only_candidate
    if discordant == 0:
        return 1.0
    return float(binomtest(only_candidate, discordant, 0.5).pvalue)


def paired_bootstrap_ci(reference_correct: np.ndarray, candidate_correct: np.ndarray,
                        rounds: int = BOOTSTRAP_ROUNDS, seed: int = SEED) -> tuple[float, float]:
    """95 % interval of Δ accuracy (candidate - reference), resampling samples with their pairs."""
    diff = candidate_correct.astype(np.float64) - reference_correct.astype(np.float64)
    if len(diff) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(diff), size=(rounds, len(diff)))
    means = diff[index].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def significant(interval: tuple[float, float]) -> bool:
    """A Δ is significant when its 95 % interval excludes 0."""
    low, high = interval
    return bool(np.isfinite(low) and (low > 0 or high < 0))
