"""Confidence intervals and paired tests for comparing arms."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval (without continuity correction) of a proportion.

    Raises:
        ValueError: total < 1, or successes outside [0, total].
    """
    if total < 1 or not 0 <= successes <= total:
        raise ValueError(f"invalid proportion {successes}/{total}: need total >= 1 and 0 <= successes <= total")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def mcnemar_exact(gained: int, lost: int) -> float:
    """Return the two-sided exact McNemar p-value for paired binary outcomes.

    Args:
        gained: pairs where only the compared arm succeeds.
        lost: pairs where only the baseline succeeds.

    The discordant pairs follow Binomial(gained + lost, 1/2) under the null hypothesis; the
    p-value doubles the smaller tail and is capped at 1. No discordant pairs gives 1.
    """
    if gained < 0 or lost < 0:
        raise ValueError(f"invalid discordant counts gained={gained}, lost={lost}: must be >= 0")
    discordant = gained + lost
    if discordant == 0:
        return 1.0
    smaller = min(gained, lost)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def paired_bootstrap_interval(differences: list[float], confidence: float = 0.95, resamples: int = 2000,
                              seed: int = 0) -> tuple[float, float]:
    """Return a percentile bootstrap interval of the mean of per-prompt paired differences."""
    values = np.asarray(differences, dtype=np.float64)  # [pairs]
    if values.size == 0:
        raise ValueError("a bootstrap interval needs at least one paired difference")
    generator = np.random.default_rng(seed)
    indices = generator.integers(0, values.size, size=(resamples, values.size))  # [resamples, pairs]
    means = values[indices].mean(axis=1)  # [resamples]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def describe(values: list[float]) -> dict[str, float | int | None]:
    """Return count, mean, median and 90th percentile of ``values`` (None for an empty list)."""
    if not values:
        return {"count": 0, "mean": None, "median": None, "p90": None}
    array = np.asarray(values, dtype=np.float64)
    return {
        "count": int(array.size),
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "p90": float(np.percentile(array, 90)),
    }
