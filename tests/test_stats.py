"""Paired statistics on constructed numbers: a known difference is found, a zero difference is not."""

import math

import numpy as np
import pytest

from seal_trl.stats import bootstrap_ci, paired_comparison, sign_test_p


def test_a_known_difference_is_found():
    rng = np.random.default_rng(1)
    b = rng.normal(-5.0, 1.0, size=30)          # passages differ a lot in difficulty ...
    a = b + 0.5 + rng.normal(0.0, 0.2, size=30)  # ... but A beats B by 0.5 on every one of them
    stats = paired_comparison(a.tolist(), b.tolist(), seed=0)
    assert stats.n == 30 and stats.wins == 30 and stats.losses == 0 and stats.ties == 0
    assert stats.mean_difference == pytest.approx(float(np.mean(a - b)))
    assert 0 < stats.ci_low < 0.5 < stats.ci_high and stats.excludes_zero
    assert stats.sign_p == pytest.approx(2 / 2**30)
    assert stats.mean_a == pytest.approx(a.mean()) and stats.mean_b == pytest.approx(b.mean())


def test_a_zero_difference_is_not_found():
    b = [-4.0, -6.0, -5.0, -3.0, -7.0, -5.5, -4.5, -6.5]
    a = [x + d for x, d in zip(b, [0.3, -0.3, 0.1, -0.1, 0.2, -0.2, 0.4, -0.4])]
    stats = paired_comparison(a, b, seed=0)
    assert stats.mean_difference == pytest.approx(0.0, abs=1e-12)
    assert stats.ci_low < 0 < stats.ci_high and not stats.excludes_zero
    assert (stats.wins, stats.losses, stats.sign_p) == (4, 4, 1.0)


def test_the_bootstrap_interval_matches_normal_theory_on_a_large_sample():
    d = np.random.default_rng(7).normal(0.3, 1.0, size=400)
    low, high = bootstrap_ci(d.tolist(), seed=3)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(d.mean(), abs=0.02)


def test_the_bootstrap_is_seeded():
    d = np.random.default_rng(2).normal(size=12).tolist()
    assert bootstrap_ci(d, seed=5) == bootstrap_ci(d, seed=5)
    assert bootstrap_ci(d, seed=5) != bootstrap_ci(d, seed=6)


@pytest.mark.parametrize("wins, losses, expected", [
    (9, 1, 2 * (1 + 10) / 2**10),                  # 0.021484375
    (5, 3, 2 * (1 + 8 + 28 + 56) / 2**8),          # 0.7265625
    (3, 5, 2 * (1 + 8 + 28 + 56) / 2**8),          # symmetric
    (6, 0, 2 / 2**6),
    (4, 4, 1.0),                                   # 2 x P(X <= 4) > 1: capped
    (0, 0, 1.0),                                   # no untied pair: no evidence
])
def test_sign_test_matches_the_hand_computed_binomial(wins, losses, expected):
    assert sign_test_p(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_ties_count_in_the_mean_but_not_in_the_sign_test():
    stats = paired_comparison([1.0, 2.0, 3.0, 5.0], [1.0, 1.0, 1.0, 5.0], seed=0)
    assert (stats.wins, stats.losses, stats.ties, stats.n) == (2, 0, 2, 4)
    assert stats.mean_difference == pytest.approx(0.75)
    assert stats.sign_p == pytest.approx(0.5)  # 2 x (1/2)^2 over the 2 untied pairs


def test_fewer_than_two_pairs_give_no_interval():
    one = paired_comparison([2.0], [1.0], seed=0)
    assert one.n == 1 and one.mean_difference == 1.0 and one.wins == 1 and one.sign_p == 1.0
    assert math.isnan(one.ci_low) and math.isnan(one.ci_high) and not one.excludes_zero
    none = paired_comparison([], [], seed=0)
    assert none.n == 0 and math.isnan(none.mean_difference) and math.isnan(none.ci_low) and none.sign_p == 1.0


def test_missing_values_drop_their_pair_and_mismatched_lengths_fail():
    stats = paired_comparison([1.0, None, 3.0, float("nan")], [0.0, 1.0, 1.0, 1.0], seed=0)
    assert stats.n == 2 and stats.mean_difference == pytest.approx(1.5)
    # a value missing for one method removes the other method's value for that item too: per pair, not per
    # method (which would shift B's values against A's and compare different items)
    shifted = paired_comparison([None, 1.0, 2.0], [5.0, 0.0, float("nan")], seed=0)
    assert (shifted.n, shifted.mean_a, shifted.mean_b, shifted.mean_difference) == (1, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="same items"):
        paired_comparison([1.0, 2.0], [1.0], seed=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_comparison([1.0, 2.0], [1.0, 0.0], seed=0, confidence=1.5)
