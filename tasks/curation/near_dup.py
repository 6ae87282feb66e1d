"""Near-duplicate images by pHash Hamming distance, found with a multi-index (band) search.

All pairs is quadratic (5e11 pairs for a million images), so the 64 hash bits are split
into `m` bands. By the pigeonhole principle, two hashes within distance d agree to within
floor(d / m) bits on at least one band; with m = d + 1 bands that means one band is
*equal*, the classic banding rule. Each band is sorted (or, when it is at most 24 bits
wide, bucketed in a direct table), every hash looks up the band values within radius
floor(d / m) of its own, and only those candidates are verified with a popcount. The
number of bands is chosen per call by a cost estimate: exact-match bands of 64/(d+1) bits
get too narrow past d ~ 4 (every bucket is huge), where fewer, wider bands searched with a
small radius (Norouzi et al.'s multi-index hashing) do far less work. Results equal the
brute-force all-pairs search (a property test checks it).

A pHash pair can optionally be confirmed by the image thumbnails (see
`tasks.curation.image_hash`): on the bundled drawings pHash alone calls thousands of
distinct scenes duplicates. Duplicates form connected groups; each group keeps its
smallest id.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tasks.curation.filters import empty_verdict
from tasks.curation.image_hash import hamming, thumbnail_distance

NEAR_DUP_REASONS = {
    "near_duplicate": (
        "the image's pHash is within the maximum Hamming distance of a kept image with a "
        "smaller id (connected group), and their thumbnails agree"
    ),
    "eval_near_copy": "the train image is a near copy (pHash within the maximum distance) "
    "of an evaluation image",
}
# Chosen on the bundled shapes pool (bench/near_dup.py): every injected near copy lies within
# pHash distance 2 of its original; 4 leaves margin for real re-encodes. The thumbnail check
# keeps distinct drawings that share a pHash apart (copies measured <= 1.0, distinct >= 2.4).
DEFAULT_MAX_DISTANCE = 4
DEFAULT_MAX_THUMB_DISTANCE = 0.008

_HASH_BITS = 64
_MAX_BALL = 4096  # neighbour keys enumerated per band value at most
_TABLE_BITS = 24  # bands up to this wide are bucketed in a direct table (2**24 int64 = 128 MB)
_LOOKUPS_PER_CHUNK = 1 << 20
_PAIRS_PER_CHUNK = 1 << 22


def _check_distance(max_distance: int) -> None:
    if not 0 <= int(max_distance) <= 32:
        raise ValueError(f"max_distance must be in [0, 32] bits of 64, got {max_distance}")


def _band_layout(num_bands: int) -> list[tuple[int, int]]:
    """(shift, width) of each band; widths differ by at most one bit and cover all 64."""
    base, extra = divmod(_HASH_BITS, num_bands)
    widths = [base + 1] * extra + [base] * (num_bands - extra)
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int).tolist()
    return list(zip(shifts, widths, strict=True))


def _ball_size(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(radius + 1))


def _ball_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit XOR mask with at most `radius` bits set (uint64)."""
    masks = [
        sum(1 << b for b in bits)
        for k in range(radius + 1)
        for bits in combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.uint64)


def plan_bands(num_index: int, num_query: int, max_distance: int) -> tuple[int, int]:
    """(number of bands, search radius per band) with the least estimated work.

    Work = lookups (queries x bands x neighbour keys; a sorted-array search costs ~8x a
    direct-table read) + candidates (lookups x expected bucket size for random hashes).
    """
    _check_distance(max_distance)
    best: tuple[float, int, int] | None = None
    for m in range(1, max_distance + 2):
        radius = max_distance // m
        widest = math.ceil(_HASH_BITS / m)
        ball = _ball_size(widest, radius)
        if ball > _MAX_BALL:
            continue
        lookups = float(num_query) * m * ball
        lookup_cost = 1.0 if widest <= _TABLE_BITS else 8.0
        candidates = lookups * num_index / 2.0 ** (_HASH_BITS // m)
        cost = lookups * lookup_cost + candidates
        if best is None or cost < best[0]:
            best = (cost, m, radius)
    assert best is not None  # m = max_distance + 1 always fits (radius 0, one key)
    return best[1], best[2]


class _BandIndex:
    """One band of the index hashes: bucket start/count per band value."""

    def __init__(self, keys: np.ndarray, width: int) -> None:
        self.order = np.argsort(keys, kind="stable")
        self.width = width
        if width <= _TABLE_BITS:
            counts = np.bincount(keys.astype(np.int64), minlength=1 << width)
            self.table_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self.table_count = counts
            self.sorted_keys = None
        else:
            self.sorted_keys = keys[self.order]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, count) into `order` of each key's bucket."""
        if self.sorted_keys is None:
            k = keys.astype(np.int64)
            return self.table_start[k], self.table_count[k]
        left = np.searchsorted(self.sorted_keys, keys, side="left")
        right = np.searchsorted(self.sorted_keys, keys, side="right")
        return left, right - left


def _expand(owner: np.ndarray, start: np.ndarray, count: np.ndarray) -> Iterator[tuple]:
    """Yield (owner, position) pairs for each range, in pieces of ~_PAIRS_PER_CHUNK."""
    keep = count > 0
    owner, start, count = owner[keep], start[keep], count[keep]
    ends = np.cumsum(count)
    lo = 0
    while lo < len(count):
        base = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, base + _PAIRS_PER_CHUNK, side="right"))
        hi = max(hi, lo + 1)  # one huge bucket is expanded alone
        c = count[lo:hi]
        total = int(c.sum())
        offsets = np.repeat(np.cumsum(c) - c, c)
        position = np.repeat(start[lo:hi], c) + (np.arange(total) - offsets)
        yield np.repeat(owner[lo:hi], c), position
        lo = hi


def hamming_pairs(
    query: np.ndarray, index: np.ndarray, max_distance: int, self_join: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query position, index position, distance) with Hamming distance <= max_distance.

    With `self_join` the two arrays are the same and each unordered pair is returned once
    (query position < index position). Sorted by (query, index).
    """
    _check_distance(max_distance)
    query = np.ascontiguousarray(query, dtype=np.uint64)
    index = np.ascontiguousarray(index, dtype=np.uint64)
    found_q: list[np.ndarray] = []
    found_i: list[np.ndarray] = []
    if len(query) and len(index):
        num_bands, radius = plan_bands(len(index), len(query), max_distance)
        for shift, width in _band_layout(num_bands):
            band_mask = np.uint64((1 << width) - 1)
            index_keys = (index >> np.uint64(shift)) & band_mask
            band = _BandIndex(index_keys, width)
            del index_keys
            query_keys = (query >> np.uint64(shift)) & band_mask
            flips = _ball_masks(width, radius)
            step = max(1, _LOOKUPS_PER_CHUNK // len(flips))
            for lo in range(0, len(query), step):
                qpos = np.arange(lo, min(lo + step, len(query)))
                neighbours = (query_keys[qpos, None] ^ flips[None, :]).ravel()
                start, count = band.lookup(neighbours)
                owner = np.repeat(qpos, len(flips))
                for q, pos in _expand(owner, start, count):
                    i = band.order[pos]
                    if self_join:
                        q, i = q[i > q], i[i > q]
                    close = hamming(query[q], index[i]) <= max_distance
                    found_q.append(q[close])
                    found_i.append(i[close])
    if not found_q:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.int64)
    # a pair close on several bands was found once per band
    q = np.concatenate(found_q).astype(np.int64)
    i = np.concatenate(found_i).astype(np.int64)
    pair = np.unique(q * len(index) + i)
    q, i = np.divmod(pair, len(index))
    return q, i, hamming(query[q], index[i]).astype(np.int64)


def brute_force_pairs(
    query: np.ndarray, index: np.ndarray, max_distance: int, self_join: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The all-pairs reference of `hamming_pairs` (quadratic: tests and benchmarks only)."""
    dist = hamming(np.asarray(query, np.uint64)[:, None], np.asarray(index, np.uint64)[None, :])
    close = dist <= max_distance
    if self_join:
        close &= np.triu(np.ones_like(close), k=1)
    q, i = np.nonzero(close)
    return q.astype(np.int64), i.astype(np.int64), dist[q, i].astype(np.int64)


def _id_ranks(ids: Sequence[str]) -> np.ndarray:
    arr = np.asarray(list(ids), dtype=object)
    if len(set(arr.tolist())) != len(arr):
        dupes = pd.Series(arr)[pd.Series(arr).duplicated()].head(3).tolist()
        raise ValueError(f"ids must be unique, e.g. {dupes} repeat")
    order = np.argsort(arr.astype(str), kind="stable")
    ranks = np.empty(len(arr), dtype=np.int64)
    ranks[order] = np.arange(len(arr))
    return ranks


def _nullable_ints(n: int, positions: np.ndarray, values: np.ndarray) -> pd.arrays.IntegerArray:
    """An Int64 array of length n: `values` at `positions`, NA elsewhere."""
    data = np.zeros(n, dtype=np.int64)
    data[positions] = values
    missing = np.ones(n, dtype=bool)
    missing[positions] = False
    return pd.arrays.IntegerArray(data, missing)


def _valid_mask(n: int, has_hash: np.ndarray | None) -> np.ndarray:
    if has_hash is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(has_hash, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"has_hash has shape {mask.shape}, expected ({n},)")
    return mask


def near_duplicates(
    ids: Sequence[str],
    hashes: np.ndarray,
    max_distance: int,
    *,
    has_hash: np.ndarray | None = None,
    thumbnails: np.ndarray | None = None,
    max_thumb_distance: float = DEFAULT_MAX_THUMB_DISTANCE,
) -> pd.DataFrame:
    """Mark near-duplicate rows: groups connected by pHash distance <= max_distance.

    Args:
        ids: unique row ids; each group keeps its smallest id.
        hashes: uint64 pHashes, positional with `ids`.
        max_distance: largest Hamming distance (bits of 64) that links two images.
        has_hash: rows with False (no image) are never duplicates; default all True.
        thumbnails: `[N, S, S, 3]` uint8 (`image_signatures`); when given, a pHash pair is
            linked only if `thumbnail_distance` <= `max_thumb_distance` too.
    Returns:
        Positional frame (RangeIndex): `duplicate` (bool), `kept_id` (None for kept rows) and
        `distance` (pHash distance to the kept image; Int64, NA for kept rows). In a chain
        a->b->c the distance from c to a may exceed max_distance.
    """
    n = len(ids)
    hashes = np.asarray(hashes, dtype=np.uint64)
    if hashes.shape != (n,):
        raise ValueError(f"hashes has shape {hashes.shape}, expected ({n},) like ids")
    ranks = _id_ranks(ids)
    rows = np.flatnonzero(_valid_mask(n, has_hash))
    if thumbnails is None:
        # equal hashes are linked already: search only the distinct values (heavy hitters
        # such as a placeholder image repeated 100k times then cost nothing)
        unique, inverse = np.unique(hashes[rows], return_inverse=True)
        a, b, _ = hamming_pairs(unique, unique, max_distance, self_join=True)
        num_nodes, node_of_row = len(unique), inverse
    else:
        if thumbnails.shape[0] != n:
            raise ValueError(f"thumbnails has {thumbnails.shape[0]} rows, expected {n}")
        a, b, _ = hamming_pairs(hashes[rows], hashes[rows], max_distance, self_join=True)
        confirmed = np.ones(len(a), dtype=bool)
        for lo in range(0, len(a), _PAIRS_PER_CHUNK):
            sl = slice(lo, lo + _PAIRS_PER_CHUNK)
            dist = thumbnail_distance(thumbnails[rows[a[sl]]], thumbnails[rows[b[sl]]])
            confirmed[sl] = dist <= max_thumb_distance
        a, b = a[confirmed], b[confirmed]
        num_nodes, node_of_row = len(rows), np.arange(len(rows))
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(num_nodes, num_nodes))
    _, component_of_node = connected_components(graph, directed=False)
    group = component_of_node[node_of_row]  # per valid row
    # keep the smallest id of each group
    best_rank = np.full(group.max() + 1 if len(group) else 0, np.iinfo(np.int64).max)
    np.minimum.at(best_rank, group, ranks[rows])
    row_of_rank = np.argsort(ranks)
    kept_row = row_of_rank[best_rank[group]]

    duplicate = np.zeros(n, dtype=bool)
    duplicate[rows] = kept_row != rows
    kept_id = np.full(n, None, dtype=object)
    dup_rows = rows[kept_row != rows]
    dup_kept = kept_row[kept_row != rows]
    kept_id[dup_rows] = np.asarray(list(ids), dtype=object)[dup_kept]
    distance = _nullable_ints(n, dup_rows, hamming(hashes[dup_rows], hashes[dup_kept]))
    return pd.DataFrame(
        {"duplicate": duplicate, "kept_id": pd.Series(kept_id, dtype=object), "distance": distance}
    )


def near_copies(
    query_hashes: np.ndarray,
    reference_hashes: np.ndarray,
    reference_ids: Sequence[str],
    max_distance: int,
    *,
    query_has_hash: np.ndarray | None = None,
    query_thumbnails: np.ndarray | None = None,
    reference_thumbnails: np.ndarray | None = None,
    max_thumb_distance: float = DEFAULT_MAX_THUMB_DISTANCE,
) -> pd.DataFrame:
    """For each query image, the nearest reference within max_distance (e.g. eval images).

    Thumbnail confirmation applies when both thumbnail arrays are given. Returns a
    positional frame: `copy` (bool), `reference_id` (nearest; ties -> smallest id; None
    when no copy) and `distance` (Int64, NA when no copy).
    """
    query = np.asarray(query_hashes, dtype=np.uint64)
    reference = np.asarray(reference_hashes, dtype=np.uint64)
    if reference.shape != (len(reference_ids),):
        raise ValueError(
            f"reference_hashes has shape {reference.shape}, expected ({len(reference_ids)},)"
        )
    if (query_thumbnails is None) != (reference_thumbnails is None):
        raise ValueError("give thumbnails for both queries and references, or for neither")
    ref_ranks = _id_ranks(reference_ids)
    rows = np.flatnonzero(_valid_mask(len(query), query_has_hash))
    q, r, dist = hamming_pairs(query[rows], reference, max_distance, self_join=False)
    q = rows[q]
    if query_thumbnails is not None and len(q):
        ok = thumbnail_distance(query_thumbnails[q], reference_thumbnails[r]) <= max_thumb_distance
        q, r, dist = q[ok], r[ok], dist[ok]
    # nearest reference per query; ties go to the smallest reference id
    order = np.lexsort((ref_ranks[r], dist, q))
    q, r, dist = q[order], r[order], dist[order]
    first = np.ones(len(q), dtype=bool)
    first[1:] = q[1:] != q[:-1]
    q, r, dist = q[first], r[first], dist[first]

    n = len(query)
    copy = np.zeros(n, dtype=bool)
    copy[q] = True
    reference_id = np.full(n, None, dtype=object)
    reference_id[q] = np.asarray(list(reference_ids), dtype=object)[r]
    distance = _nullable_ints(n, q, dist)
    return pd.DataFrame(
        {"copy": copy, "reference_id": pd.Series(reference_id, dtype=object), "distance": distance}
    )


def _verdict(flag: np.ndarray, index: pd.Index, reason: str, details: list[str]) -> pd.DataFrame:
    if len(flag) != len(index):
        raise ValueError(f"result has {len(flag)} rows but the index {len(index)}")
    verdict = empty_verdict(index)
    if flag.any():
        verdict.loc[flag, "reason"] = reason
        verdict.loc[flag, "detail"] = details
    return verdict


def near_duplicate_verdict(result: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """`near_duplicates` output as `reason`/`detail` columns on the rows' own `index`."""
    flag = result["duplicate"].to_numpy(dtype=bool)
    details = [
        f"pHash distance {d} to kept id {k}"
        for d, k in zip(result["distance"][flag], result["kept_id"][flag], strict=True)
    ]
    return _verdict(flag, index, "near_duplicate", details)


def eval_near_copy_verdict(result: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """`near_copies` output as `reason`/`detail` (`eval_near_copy`) on the rows' `index`."""
    flag = result["copy"].to_numpy(dtype=bool)
    details = [
        f"pHash distance {d} to eval image {r}"
        for d, r in zip(result["distance"][flag], result["reference_id"][flag], strict=True)
    ]
    return _verdict(flag, index, "eval_near_copy", details)
