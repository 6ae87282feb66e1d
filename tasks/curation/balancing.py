"""MetaCLIP balancing: flatten the head of the entry distribution, keep the tail.

    count[e] = pairs matching e;   p[e] = t / max(count[e], t)
    a pair is kept if ANY matched entry e draws rand() < p[e]   (each pair at most once)

so a pair's keep probability is q = 1 - prod_e (1 - p[e]) over its matched entries.
`kept_count_bounds` turns that into a sound check on the kept counts (used by gate_curated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _flatten(matches: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(pair index, entry id) arrays, one element per (pair, matched entry)."""
    lengths = np.fromiter((len(m) for m in matches), dtype=np.int64, count=len(matches))
    pair_idx = np.repeat(np.arange(len(matches), dtype=np.int64), lengths)
    entry_idx = np.fromiter((e for m in matches for e in m), dtype=np.int64, count=lengths.sum())
    return pair_idx, entry_idx


def entry_counts(matches: Sequence[Sequence[int]], num_entries: int) -> np.ndarray:
    """count[e]: how many pairs match entry e (a pair counts once per distinct entry)."""
    _, entry_idx = _flatten(matches)
    return np.bincount(entry_idx, minlength=num_entries).astype(np.int64)


def entry_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    """p[e] = t / max(count[e], t): tail entries (count <= t) get p = 1."""
    return t / np.maximum(counts, t).astype(np.float64)


def balance(
    matches: Sequence[Sequence[int]], counts: np.ndarray, t: int, rng: np.random.Generator
) -> np.ndarray:
    """Boolean keep-mask over pairs. Pairs with no matched entry are never kept here."""
    p = entry_probabilities(counts, t)
    pair_idx, entry_idx = _flatten(matches)
    # one uniform draw per (pair, entry), in pair order, so a seed reproduces the result
    hits = rng.random(len(entry_idx)) < p[entry_idx]
    return np.bincount(pair_idx[hits], minlength=len(matches)) > 0


def keep_probabilities(matches: Sequence[Sequence[int]], p: np.ndarray) -> np.ndarray:
    """q[i] = 1 - prod over matched e of (1 - p[e]): the chance `balance` keeps pair i."""
    pair_idx, entry_idx = _flatten(matches)
    log_miss = np.zeros(len(matches))
    # log1p(-1) = -inf for tail entries: q = 1 exactly, as it should
    with np.errstate(divide="ignore"):
        np.add.at(log_miss, pair_idx, np.log1p(-p[entry_idx]))
    return -np.expm1(log_miss)


def bernstein_deviation(variance: np.ndarray, delta: float) -> np.ndarray:
    """s such that P(X - E[X] >= s) <= delta for a sum X of independent Bernoullis.

    Bernstein: P(X - E >= s) <= exp(-s^2 / (2 (V + s/3))); solving for s gives
    s = L/3 + sqrt(L^2/9 + 2 V L) with L = ln(1/delta). Valid at any sample size.
    """
    log_term = math.log(1.0 / delta)
    return log_term / 3.0 + np.sqrt(log_term**2 / 9.0 + 2.0 * variance * log_term)


def kept_count_bounds(
    matches: Sequence[Sequence[int]], num_entries: int, t: int, alpha: float
) -> dict[str, np.ndarray]:
    """Expected kept count per entry and a two-sided bound that holds jointly w.p. >= 1-alpha.

    `matches` are the pairs that entered balancing. Pair i is kept independently with
    probability q[i], so kept[e] = sum over pairs matching e of Bernoulli(q[i]) with mean
    sum q and variance sum q(1-q). A union bound over both tails of every matched entry
    sets delta = alpha / (2 * entries). An entry whose kept count falls outside
    [lower, upper] was not balanced with threshold t.
    """
    counts = entry_counts(matches, num_entries)
    p = entry_probabilities(counts, t)
    q = keep_probabilities(matches, p)
    pair_idx, entry_idx = _flatten(matches)
    expected = np.bincount(entry_idx, weights=q[pair_idx], minlength=num_entries)
    variance = np.bincount(entry_idx, weights=(q * (1.0 - q))[pair_idx], minlength=num_entries)
    active = max(int((counts > 0).sum()), 1)
    dev = bernstein_deviation(variance, alpha / (2.0 * active))
    # zero variance means every q is 0 or 1: the kept count is determined exactly
    dev = np.where(variance > 0, dev, 0.0)
    return {
        "count": counts,
        "p": p,
        "expected": expected,
        "lower": np.maximum(expected - dev, 0.0),
        "upper": np.minimum(expected + dev, counts.astype(np.float64)),
    }
