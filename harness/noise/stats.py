"""Uncertainty of a Δ on paired predictions: McNemar's exact test and a paired bootstrap interval.

Both sides saw the same samples, so the comparison is paired: only the samples where exactly one side
is right carry information (McNemar), and resampling samples keeps the pairs together (bootstrap).
"""
from __future__ import annotations

import numpy as np

BOOTSTRAP_ROUNDS = 2000
SEED = 0
ALPHA = 0.05
# the one significance rule of each metric kind; every report (table, JSON, HTML, gate) reads `significant`
ACCURACY_RULE = ("McNemar's exact test on the paired samples, p < 0.05 (ci95: paired bootstrap over samples, "
                 "shown for scale, not the test)")
MAP_RULE = "paired bootstrap over images, a fixed number of seeded rounds: the 95 % interval of Δ mAP excludes 0"
MAP_ROUNDS = 200  # ~100 ms a round on 120 detector images (pycocotools accumulate, twice): ~20 s an interval


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


def significance_block(task, bootstrap_rounds: int) -> dict:
    """A report's `significance`: the task's one rule, its level, and the bootstrap's rounds where they
    decide (a task whose metric is a whole-set evaluation)."""
    return {"rule": task.significance_rule, "alpha": ALPHA,
            "bootstrap_rounds": bootstrap_rounds if task.evaluates_whole_set else None}


def accuracy_change(reference_correct: np.ndarray, candidate_correct: np.ndarray) -> dict:
    """The row fields of a paired accuracy Δ: `significant` by McNemar's exact test (ACCURACY_RULE), the
    bootstrap interval beside it. The two can disagree near the edge (4 samples fixed and none broken:
    the interval excludes 0, p = 0.125); the test decides, as is standard for paired classifiers."""
    p_value = mcnemar_exact(reference_correct, candidate_correct)
    return {"ci95": list(paired_bootstrap_ci(reference_correct, candidate_correct)), "p_value": p_value,
            "significant": bool(p_value < ALPHA), "significance_test": "mcnemar-exact"}


def significant(interval: tuple[float, float]) -> bool:
    """A Δ is significant when its 95 % interval excludes 0."""
    low, high = interval
    return bool(np.isfinite(low) and (low > 0 or high < 0))
