"""One-sided Mann-Whitney U test, with scipy when installed and our own code otherwise.

The fallback follows scipy's ``mannwhitneyu(method="auto")`` (scipy 1.17): the exact
distribution when the smaller sample has at most 8 values and there are no ties,
otherwise the normal approximation with tie and continuity corrections.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import cache

EXACT_MAX_SIZE = 8


def mann_whitney_p(sample: Sequence[float], reference: Sequence[float], alternative: str) -> float:
    """Return the p-value that ``sample`` is stochastically greater (or less) than ``reference``.

    ``alternative`` is "greater" or "less".
    """
    assert alternative in ("greater", "less"), f"unknown alternative {alternative!r}"
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        return mann_whitney_p_fallback(sample, reference, alternative)
    return float(mannwhitneyu(sample, reference, alternative=alternative).pvalue)


def mann_whitney_p_fallback(
    sample: Sequence[float], reference: Sequence[float], alternative: str
) -> float:
    """Compute the same p-value as mann_whitney_p without scipy."""
    n1, n2 = len(sample), len(reference)
    u = sum((x > y) + 0.5 * (x == y) for x in sample for y in reference)
    if alternative == "less":
        u = n1 * n2 - u  # the "less" test is the "greater" test with the roles swapped
    ties = Counter([*sample, *reference])
    if min(n1, n2) <= EXACT_MAX_SIZE and max(ties.values()) == 1:
        return _exact_upper_tail(n1, n2, round(u))
    return _normal_upper_tail(n1, n2, u, ties)


def _exact_upper_tail(n1: int, n2: int, u: int) -> float:
    total = math.comb(n1 + n2, n1)
    return sum(_arrangements(n1, n2, value) for value in range(u, n1 * n2 + 1)) / total


@cache
def _arrangements(n1: int, n2: int, u: int) -> int:
    """Count the orderings of n1 + n2 distinct values whose U statistic equals ``u``."""
    if u < 0 or u > n1 * n2:
        return 0
    if n1 == 0 or n2 == 0:
        return 1 if u == 0 else 0
    # The largest value belongs to the first sample (beating all n2 others) or to the second.
    return _arrangements(n1 - 1, n2, u - n2) + _arrangements(n1, n2 - 1, u)


def _normal_upper_tail(n1: int, n2: int, u: float, ties: Counter[float]) -> float:
    n = n1 + n2
    tie_term = sum(count**3 - count for count in ties.values()) / (n * (n - 1))
    variance = n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))
