"""Paired comparison of two methods scored on the same items: mean difference, bootstrap CI, sign test.

Pure Python and numpy (no torch), so reports and tests can use it anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedStats:
    """Method A against method B on the same n items: the per-item difference A - B summarised.

    `ci_low`/`ci_high` are a percentile-bootstrap interval of the mean difference (NaN when n < 2: one pair
    says nothing about spread); `sign_p` is the two-sided exact sign test with ties dropped (1.0 when every
    pair ties).
    """

    n: int
    mean_a: float
    mean_b: float
    mean_difference: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    sign_p: float
    confidence: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole confidence interval lies on one side of zero."""
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _is_missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact binomial sign test of `wins` against `losses` (ties already dropped), p = 0.5."""
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be >= 0, got {wins} and {losses}")
    trials = wins + losses
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**trials)


def bootstrap_ci(differences: Sequence[float], *, seed: int, resamples: int = 10_000,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `differences` (NaN, NaN when fewer than 2)."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // values.size)  # bounded memory for long inputs
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = values[rng.integers(0, values.size, size=(stop - start, values.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_comparison(a: Sequence[float | None], b: Sequence[float | None], *, seed: int = 0,
                      resamples: int = 10_000, confidence: float = 0.95) -> PairedStats:
    """Compare A with B item by item (A - B). Pairs where either value is missing (None/NaN) are dropped.

    A difference of exactly 0 is a tie: it counts in the mean and the bootstrap, not in the sign test.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_comparison needs the same items for both methods: {len(a)} vs {len(b)} values")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"confidence must be in (0, 1) and resamples >= 1, got {confidence} and {resamples}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if not (_is_missing(x) or _is_missing(y))]
    diffs = [x - y for x, y in pairs]
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    low, high = bootstrap_ci(diffs, seed=seed, resamples=resamples, confidence=confidence)
    nan = float("nan")
    return PairedStats(
        n=len(pairs),
        mean_a=float(np.mean([x for x, _ in pairs])) if pairs else nan,
        mean_b=float(np.mean([y for _, y in pairs])) if pairs else nan,
        mean_difference=float(np.mean(diffs)) if diffs else nan,
        ci_low=low, ci_high=high, wins=wins, losses=losses, ties=len(diffs) - wins - losses,
        sign_p=sign_test_p(wins, losses), confidence=confidence, resamples=resamples,
    )
