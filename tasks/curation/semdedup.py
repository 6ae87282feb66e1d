"""SemDeDup (Abbas et al. 2023): semantic near duplicates among embeddings, within k-means clusters.

As in facebookresearch/SemDeDup: L2-normalise, cluster with spherical k-means (here
scikit-learn's k-means on the unit vectors, seeded, centroids re-normalised), order each
cluster farthest-from-centroid first (the reference's default "hard" order: atypical
examples are kept), and drop member j when max over earlier members i of cos(i, j) >
1 - epsilon. Earlier members count whether or not they were dropped themselves, exactly as
the reference's upper-triangular max does. The similarity matrix of a big cluster is built
in blocks, so memory stays bounded by `block_rows` x cluster size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tasks.curation.filters import empty_verdict

SEMDEDUP_REASONS = {
    "semantic_duplicate": (
        "an earlier member of the same k-means cluster has embedding cosine > 1 - epsilon"
    ),
}
_MINIBATCH_ABOVE = 50_000  # rows; above this MiniBatchKMeans keeps clustering fast


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def spherical_kmeans(
    unit: np.ndarray, num_clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(cluster label per row, unit-norm centroids) of k-means on unit vectors, seeded."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = min(num_clusters, len(unit))
    if len(unit) > _MINIBATCH_ABOVE:
        model = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096)
    else:
        model = KMeans(k, random_state=seed, n_init=1)
    labels = model.fit_predict(unit)
    return labels, normalise_rows(model.cluster_centers_)


def _dedup_cluster(
    unit: np.ndarray, epsilon: float, block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """For members in keep order: (max cos to any earlier member, argmax), -inf/-1 for the first."""
    n = len(unit)
    best = np.full(n, -np.inf, dtype=np.float32)
    best_of = np.full(n, -1, dtype=np.int64)
    for lo in range(0, n, block_rows):
        hi = min(lo + block_rows, n)
        sims = unit[:hi] @ unit[lo:hi].T  # earlier (rows) x this block (columns)
        # only i < j counts: blank the diagonal and below within the block
        rows = np.arange(hi)[:, None]
        cols = np.arange(lo, hi)[None, :]
        sims[rows >= cols] = -np.inf
        best_of[lo:hi] = sims.argmax(axis=0)
        best[lo:hi] = sims.max(axis=0)
    return best, best_of


def semantic_duplicates(
    ids: Sequence[str],
    embeddings: np.ndarray,
    num_clusters: int,
    epsilon: float,
    seed: int,
    *,
    block_rows: int = 2048,
) -> pd.DataFrame:
    """Mark SemDeDup duplicates among `embeddings` (rows with any NaN are skipped).

    Returns a positional frame: `duplicate` (bool), `kept_id` (the kept member it duplicates,
    following its most similar earlier member to a kept one; None when kept) and
    `similarity` (that max cosine; NaN for the first member of a cluster and skipped rows).
    """
    n = len(ids)
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"embeddings has shape {emb.shape}, expected ({n}, dim) like ids")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    ids_arr = np.asarray(list(ids), dtype=object)
    duplicate = np.zeros(n, dtype=bool)
    kept_id = np.full(n, None, dtype=object)
    similarity = np.full(n, np.nan, dtype=np.float32)
    valid = np.flatnonzero(~np.isnan(emb).any(axis=1))
    if len(valid) == 0:
        return pd.DataFrame(
            {
                "duplicate": duplicate,
                "kept_id": pd.Series(kept_id, dtype=object),
                "similarity": similarity,
            }  # fmt: skip
        )
    unit = normalise_rows(emb[valid])
    labels, centroids = spherical_kmeans(unit, num_clusters, seed)
    ids_valid = ids_arr[valid].astype(str)
    for c in tqdm(range(len(centroids)), desc="semdedup", disable=len(valid) < 50_000):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        to_centroid = unit[members] @ centroids[c]
        # farthest from the centroid first; ties by id so the order never depends on input order
        order = members[np.lexsort((ids_valid[members], to_centroid))]
        best, best_of = _dedup_cluster(unit[order], epsilon, block_rows)
        rows = valid[order]
        similarity[rows] = np.where(np.isfinite(best), best, np.nan)
        dropped = best > 1.0 - epsilon
        keeper = np.arange(len(order))
        for j in np.flatnonzero(dropped):  # in keep order: earlier members are resolved
            keeper[j] = keeper[best_of[j]]
        duplicate[rows[dropped]] = True
        kept_id[rows[dropped]] = ids_arr[rows[keeper[dropped]]]
    return pd.DataFrame(
        {
            "duplicate": duplicate,
            "kept_id": pd.Series(kept_id, dtype=object),
            "similarity": similarity,
        }  # fmt: skip
    )


def semantic_duplicate_verdict(result: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """`semantic_duplicates` output as `reason`/`detail` columns on the rows' own `index`."""
    flag = result["duplicate"].to_numpy(dtype=bool)
    if len(flag) != len(index):
        raise ValueError(f"result has {len(flag)} rows but the index {len(index)}")
    verdict = empty_verdict(index)
    if flag.any():
        verdict.loc[flag, "reason"] = "semantic_duplicate"
        verdict.loc[flag, "detail"] = [
            f"cosine {s:.4f} to kept id {k}"
            for s, k in zip(result["similarity"][flag], result["kept_id"][flag], strict=True)
        ]
    return verdict
