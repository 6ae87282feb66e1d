"""MetaCLIP balancing: the rule's statistics, hash seeding, count merging, t from a tail share."""

import numpy as np
import pytest

from tasks.curation.balancing import (
    EntryCounts,
    balance,
    entry_counts,
    entry_probabilities,
    keep_probabilities,
    kept_count_bounds,
    t_for_tail_share,
    tail_share,
)


def _single_entry_pool(counts: list[int]) -> list[list[int]]:
    return [[e] for e, c in enumerate(counts) for _ in range(c)]


def _ids(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(n)]


def _kept_counts(ids, matches, t, seed, num_entries):
    kept = balance(ids, matches, entry_counts(matches, num_entries), t, seed)
    return entry_counts([m for m, k in zip(matches, kept, strict=True) if k], num_entries)


def test_kept_per_entry_is_about_min_count_t() -> None:
    counts, t = [5000, 800, 300, 50], 200
    matches = _single_entry_pool(counts)
    kept_counts = _kept_counts(_ids(len(matches)), matches, t, 7, 4)
    for c, k in zip(counts, kept_counts, strict=True):
        expected = min(c, t)
        # Binomial(c, t/c): sd = sqrt(t (1 - t/c)); 5 sd is a wide, sound margin
        sd = np.sqrt(expected * (1 - expected / c))
        assert abs(k - expected) <= 5 * sd + 1e-9, (c, k)
    assert kept_counts[3] == 50  # tail entries keep every pair


def test_mean_kept_over_seeds_matches_expectation() -> None:
    """Mean kept count per entry over 200 seeds = sum of keep probabilities, within 5 sd."""
    rng = np.random.default_rng(0)
    # overlapping matches: each pair matches 1-3 of 12 Zipf-ish entries
    weights = 1.0 / np.arange(1, 13)
    weights /= weights.sum()
    matches = [
        sorted(set(rng.choice(12, size=rng.integers(1, 4), p=weights).tolist()))
        for _ in range(3000)
    ]
    ids, t, seeds = _ids(len(matches)), 150, 200
    bounds = kept_count_bounds(matches, 12, t, alpha=0.01)
    runs = np.array([_kept_counts(ids, matches, t, s, 12) for s in range(seeds)])
    mean = runs.mean(axis=0)
    sd_of_mean = np.sqrt(bounds["variance"] / seeds)
    assert np.all(np.abs(mean - bounds["expected"]) <= 5 * sd_of_mean + 1e-9)
    # head entries are flattened towards t, well below their raw counts
    assert bounds["count"][0] > 3 * t and mean[0] < 0.6 * bounds["count"][0]
    # the observed spread across seeds agrees with the variance the bound uses
    head = bounds["variance"] > 10
    ratio = runs.var(axis=0)[head] / bounds["variance"][head]
    assert np.all((ratio > 0.6) & (ratio < 1.5)), ratio


def test_probabilities_and_keep_once() -> None:
    counts = np.array([10, 1000, 0])
    p = entry_probabilities(counts, 100)
    assert np.allclose(p, [1.0, 0.1, 1.0])
    q = keep_probabilities([[1], [0, 1], [1, 1], []], p)
    assert np.allclose(q, [0.1, 1.0, 0.19, 0.0])
    matches = [[0, 1]] * 50
    kept = balance(_ids(50), matches, entry_counts(matches, 2), 10, 0)
    assert kept.shape == (50,) and kept.dtype == bool


def test_result_depends_on_ids_and_seed_not_order() -> None:
    matches = _single_entry_pool([2000, 100])
    ids = _ids(len(matches))
    counts = entry_counts(matches, 2)
    kept = balance(ids, matches, counts, 300, 5)
    order = np.random.default_rng(1).permutation(len(ids))
    shuffled = balance([ids[i] for i in order], [matches[i] for i in order], counts, 300, 5)
    assert np.array_equal(kept[order], shuffled)
    other_seed = balance(ids, matches, counts, 300, 6)
    assert not np.array_equal(kept, other_seed)


def test_counts_merge_across_shards() -> None:
    matches = [[0], [0, 2], [1], [2], [0, 1, 2]] * 20
    whole = EntryCounts.from_matches(matches, 3)
    parts = [EntryCounts.from_matches(matches[i::3], 3) for i in range(3)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert np.array_equal(merged.counts, whole.counts) and merged.total_matches == 160
    with pytest.raises(ValueError, match="same metadata"):
        merged.merge(EntryCounts.zeros(4))


def test_keep_probability_matches_simulation() -> None:
    matches = [[0, 1]] * 4000 + [[1]] * 4000
    counts = entry_counts(matches, 2)  # [4000, 8000]
    q = keep_probabilities(matches, entry_probabilities(counts, 800))
    ids = _ids(len(matches))
    rate = np.mean([balance(ids, matches, counts, 800, s)[:4000].mean() for s in range(5)])
    assert abs(rate - q[0]) < 0.02  # q = 1 - 0.8 * 0.9 = 0.28


def test_bounds_cover_seeded_runs_and_catch_unbalanced() -> None:
    counts, t = [3000, 400, 100], 150
    matches = _single_entry_pool(counts) + [[0, 2]] * 30
    ids = _ids(len(matches))
    bounds = kept_count_bounds(matches, 3, t, alpha=0.01)
    misses = 0
    for seed in range(40):
        k = _kept_counts(ids, matches, t, seed, 3)
        misses += bool(np.any((k > bounds["upper"]) | (k < bounds["lower"])))
    assert misses <= 2
    # keeping everything (no balancing) is far outside the bound for the head entry
    assert bounds["count"][0] > bounds["upper"][0]


def test_t_from_tail_share() -> None:
    counts = np.array([1000, 500, 100, 10, 0])
    # share(t) = sum min(c, t) / 1610; at t = 100: (100 + 100 + 100 + 10) / 1610
    assert tail_share(counts, 100) == pytest.approx(310 / 1610)
    for share in [0.05, 0.2, 310 / 1610, 0.5, 0.9, 1.0]:
        t = t_for_tail_share(counts, share)
        assert tail_share(counts, t) >= share - 1e-12
        assert t == 1 or tail_share(counts, t - 1) < share  # the smallest such t
    assert t_for_tail_share(counts, 1.0) == 1000
    assert t_for_tail_share(counts, 310 / 1610) == 100
    assert t_for_tail_share(np.zeros(3, dtype=np.int64), 0.5) == 1
    with pytest.raises(ValueError):
        t_for_tail_share(counts, 0.0)
