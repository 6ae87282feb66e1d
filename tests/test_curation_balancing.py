"""MetaCLIP balancing: kept counts per entry follow min(count, t); the gate's bound is sound."""

import numpy as np

from tasks.curation.balancing import (
    balance,
    entry_counts,
    entry_probabilities,
    keep_probabilities,
    kept_count_bounds,
)


def _single_entry_pool(counts: list[int]) -> list[list[int]]:
    return [[e] for e, c in enumerate(counts) for _ in range(c)]


def test_kept_per_entry_is_about_min_count_t() -> None:
    counts, t = [5000, 800, 300, 50], 200
    matches = _single_entry_pool(counts)
    kept = balance(matches, entry_counts(matches, 4), t, np.random.default_rng(7))
    kept_counts = entry_counts([m for m, k in zip(matches, kept, strict=True) if k], 4)
    for c, k in zip(counts, kept_counts, strict=True):
        expected = min(c, t)
        # Binomial(c, t/c): sd = sqrt(t (1 - t/c)) <= sqrt(t); 5 sd is a wide, sound margin
        sd = np.sqrt(expected * (1 - expected / c))
        assert abs(k - expected) <= 5 * sd + 1e-9, (c, k)
    assert kept_counts[3] == 50  # tail entries keep every pair


def test_probabilities_and_keep_once() -> None:
    counts = np.array([10, 1000, 0])
    p = entry_probabilities(counts, 100)
    assert np.allclose(p, [1.0, 0.1, 1.0])
    q = keep_probabilities([[1], [0, 1], [1, 1], []], p)
    assert np.allclose(q, [0.1, 1.0, 0.19, 0.0])
    # a pair matching several entries is kept at most once: the mask is per pair
    matches = [[0, 1]] * 50
    kept = balance(matches, entry_counts(matches, 2), 10, np.random.default_rng(0))
    assert kept.shape == (50,) and kept.dtype == bool


def test_keep_probability_matches_simulation() -> None:
    matches = [[0, 1]] * 4000 + [[1]] * 4000
    counts = entry_counts(matches, 2)  # [4000, 8000]
    q = keep_probabilities(matches, entry_probabilities(counts, 800))
    rate = np.mean(
        [balance(matches, counts, 800, np.random.default_rng(s))[:4000].mean() for s in range(5)]
    )
    assert abs(rate - q[0]) < 0.02  # q = 1 - 0.8 * 0.9 = 0.28


def test_bounds_cover_seeded_runs_and_catch_unbalanced() -> None:
    counts, t = [3000, 400, 100], 150
    matches = _single_entry_pool(counts) + [[0, 2]] * 30
    bounds = kept_count_bounds(matches, 3, t, alpha=0.01)
    misses = 0
    for seed in range(40):
        kept = balance(matches, entry_counts(matches, 3), t, np.random.default_rng(seed))
        k = entry_counts([m for m, x in zip(matches, kept, strict=True) if x], 3)
        misses += bool(np.any((k > bounds["upper"]) | (k < bounds["lower"])))
    assert misses <= 2
    # keeping everything (no balancing) is far outside the bound for the head entry
    assert bounds["count"][0] > bounds["upper"][0]
