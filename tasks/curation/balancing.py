"""MetaCLIP balancing: flatten the head of the entry distribution, keep the tail.

    count[e] = pairs matching e;   p[e] = t / max(count[e], t)
    a pair is kept if ANY matched entry e draws u(pair, e) < p[e]   (each pair at most once)

so a pair's keep probability is q = 1 - prod_e (1 - p[e]) over its matched entries.

Matches travel flat: `pair_idx[k]`, `entry_idx[k]` is the k-th (pair, matched entry) of a
chunk, which is how Arrow list columns store them (no Python list per pair at scale).
Counts merge across shards and workers (`EntryCounts.merge`). The uniform u(pair, e) is a
hash of (seed, pair id, entry id), not a draw from a sequential stream, so the kept set
does not depend on how the pool was sharded or in which order shards were read.
`t_for_tail_share` derives t from the pool (MetaCLIP 2's t_to_p / p_to_t idea) and
`kept_count_bounds` turns the rule into a sound check on kept counts (gate_curated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def flatten_matches(matches: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(pair index, entry id) arrays, one element per (pair, matched entry)."""
    lengths = np.fromiter((len(m) for m in matches), dtype=np.int64, count=len(matches))
    pair_idx = np.repeat(np.arange(len(matches), dtype=np.int64), lengths)
    entry_idx = np.fromiter((e for m in matches for e in m), dtype=np.int64, count=lengths.sum())
    return pair_idx, entry_idx


@dataclass
class EntryCounts:
    """count[e] over some pairs; counts of disjoint shards `merge` into the pool's counts."""

    counts: np.ndarray  # int64, one per entry

    @classmethod
    def zeros(cls, num_entries: int) -> EntryCounts:
        return cls(np.zeros(num_entries, dtype=np.int64))

    @classmethod
    def from_flat(cls, entry_idx: np.ndarray, num_entries: int) -> EntryCounts:
        """Counts from the flat entry ids of distinct (pair, entry) matches."""
        return cls(np.bincount(entry_idx, minlength=num_entries).astype(np.int64))

    @classmethod
    def from_matches(cls, matches: Sequence[Sequence[int]], num_entries: int) -> EntryCounts:
        return cls.from_flat(flatten_matches(matches)[1], num_entries)

    def merge(self, other: EntryCounts) -> EntryCounts:
        """Counts of the union of two disjoint sets of pairs."""
        if len(other.counts) != len(self.counts):
            raise ValueError(
                f"cannot merge counts over {len(self.counts)} and {len(other.counts)} entries: "
                "both shards must be matched against the same metadata"
            )
        return EntryCounts(self.counts + other.counts)

    @property
    def total_matches(self) -> int:
        return int(self.counts.sum())


def entry_counts(matches: Sequence[Sequence[int]], num_entries: int) -> np.ndarray:
    """count[e]: how many pairs match entry e (a pair counts once per distinct entry)."""
    return EntryCounts.from_matches(matches, num_entries).counts


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """p[e] = t / max(count[e], t): tail entries (count <= t) get p = 1."""
    return t / np.maximum(counts, t).astype(np.float64)


def tail_share(counts: np.ndarray, t: float) -> float:
    """Share of all matches that survive balancing at t: sum min(count, t) / sum count.

    This is MetaCLIP 2's `t_to_p`: the share of matches that falls in the tail (below t).
    """
    total = counts.sum()
    return float(np.minimum(counts, t).sum() / total) if total else 1.0


def t_for_tail_share(counts: np.ndarray, share: float) -> int:
    """The smallest integer t with tail_share(counts, t) >= share (MetaCLIP 2's `p_to_t`).

    tail_share is piecewise linear and increasing in t, so this is solved exactly: with the
    counts sorted, between two consecutive counts it is (prefix sum + t * entries above) /
    total. Returns 1 for an empty pool.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"tail share must be in (0, 1], got {share}")
    c = np.sort(counts[counts > 0].astype(np.int64))
    if len(c) == 0:
        return 1
    total = float(c.sum())
    target = share * total
    prefix = np.concatenate([[0], np.cumsum(c)[:-1]])  # sum of counts strictly below c[i]
    above = len(c) - np.arange(len(c))  # entries with count >= c[i]
    # at t = c[i]: kept = prefix[i] + c[i] * above[i]; find the first segment reaching target
    kept_at = prefix + c * above
    i = int(np.searchsorted(kept_at, target - 1e-9 * total, side="left"))
    if i >= len(c):
        return int(c[-1])
    t = (target - prefix[i]) / above[i]
    t_int = max(1, math.ceil(t - 1e-9))
    return t_int if tail_share(c, t_int) >= share - 1e-12 else t_int + 1


def id_hashes(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of each pair id (pandas' SipHash with its fixed key)."""
    return pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective mix of uint64s (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def pair_entry_uniforms(seed: int, pair_hashes: np.ndarray, entry_idx: np.ndarray) -> np.ndarray:
    """u in [0, 1) for each (pair, entry), a pure function of (seed, pair id, entry id)."""
    with np.errstate(over="ignore"):
        seeded = _splitmix64(np.full(1, np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))[0]
        mixed = _splitmix64(pair_hashes.astype(np.uint64) ^ seeded)
        mixed = _splitmix64(mixed ^ (entry_idx.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)))
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def balance_flat(
    pair_hashes: np.ndarray,
    pair_idx: np.ndarray,
    entry_idx: np.ndarray,
    p: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Keep-mask over pairs (len(pair_hashes)); a pair with no match is never kept here."""
    u = pair_entry_uniforms(seed, pair_hashes[pair_idx], entry_idx)
    hits = u < p[entry_idx]
    return np.bincount(pair_idx[hits], minlength=len(pair_hashes)) > 0


def balance(
    ids: Sequence[str], matches: Sequence[Sequence[int]], counts: np.ndarray, t: float, seed: int
) -> np.ndarray:
    """Boolean keep-mask over pairs given as ids and lists of matched entry ids."""
    pair_idx, entry_idx = flatten_matches(matches)
    return balance_flat(id_hashes(ids), pair_idx, entry_idx, entry_probabilities(counts, t), seed)


def keep_probabilities_flat(
    pair_idx: np.ndarray, entry_idx: np.ndarray, num_pairs: int, p: np.ndarray
) -> np.ndarray:
    """q[i] = 1 - prod over matched e of (1 - p[e]): the chance a pair is kept."""
    log_miss = np.zeros(num_pairs)
    # log1p(-1) = -inf for tail entries: q = 1 exactly, as it should
    with np.errstate(divide="ignore"):
        np.add.at(log_miss, pair_idx, np.log1p(-p[entry_idx]))
    return -np.expm1(log_miss)


def keep_probabilities(matches: Sequence[Sequence[int]], p: np.ndarray) -> np.ndarray:
    """`keep_probabilities_flat` over lists of matched entry ids."""
    pair_idx, entry_idx = flatten_matches(matches)
    return keep_probabilities_flat(pair_idx, entry_idx, len(matches), p)


def bernstein_deviation(variance: np.ndarray, delta: float) -> np.ndarray:
    """s such that P(X - E[X] >= s) <= delta for a sum X of independent Bernoullis.

    Bernstein: P(X - E >= s) <= exp(-s^2 / (2 (V + s/3))); solving for s gives
    s = L/3 + sqrt(L^2/9 + 2 V L) with L = ln(1/delta). Valid at any sample size.
    """
    log_term = math.log(1.0 / delta)
    return log_term / 3.0 + np.sqrt(log_term**2 / 9.0 + 2.0 * variance * log_term)


def kept_count_bounds_flat(
    pair_idx: np.ndarray,
    entry_idx: np.ndarray,
    num_pairs: int,
    num_entries: int,
    t: float,
    alpha: float,
) -> dict[str, np.ndarray]:
    """Expected kept count per entry and a two-sided bound that holds jointly w.p. >= 1-alpha.

    The pairs are those that entered balancing. Pair i is kept with probability q[i]
    (hash uniforms behave as independent draws), so kept[e] = sum over pairs matching e of
    Bernoulli(q[i]), mean sum q, variance sum q(1-q). A union bound over both tails of every
    matched entry sets delta = alpha / (2 * entries). An entry whose kept count falls
    outside [lower, upper] was not balanced with threshold t.
    """
    counts = np.bincount(entry_idx, minlength=num_entries).astype(np.int64)
    p = entry_probabilities(counts, t)
    q = keep_probabilities_flat(pair_idx, entry_idx, num_pairs, p)
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
        "variance": variance,
        "lower": np.maximum(expected - dev, 0.0),
        "upper": np.minimum(expected + dev, counts.astype(np.float64)),
    }


def kept_count_bounds(
    matches: Sequence[Sequence[int]], num_entries: int, t: float, alpha: float
) -> dict[str, np.ndarray]:
    """`kept_count_bounds_flat` over lists of matched entry ids."""
    pair_idx, entry_idx = flatten_matches(matches)
    return kept_count_bounds_flat(pair_idx, entry_idx, len(matches), num_entries, t, alpha)
