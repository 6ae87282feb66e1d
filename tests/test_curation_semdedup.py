"""SemDeDup: planted near-identical pairs lose exactly one member, seeded and block-size free."""

import numpy as np
import pandas as pd
import pytest

from tasks.curation.semdedup import (
    SEMDEDUP_REASONS,
    semantic_duplicate_verdict,
    semantic_duplicates,
)


def _planted(n: int = 300, dim: int = 48, pairs: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim)).astype(np.float32)
    twins = base[:pairs] + rng.normal(scale=1e-3, size=(pairs, dim)).astype(np.float32)
    twins *= rng.uniform(0.5, 2.0, size=(pairs, 1)).astype(np.float32)  # norm must not matter
    emb = np.concatenate([base, twins])
    ids = [f"b{k:04d}" for k in range(n)] + [f"t{k:04d}" for k in range(pairs)]
    return ids, emb, pairs


def test_removes_exactly_one_of_each_planted_pair() -> None:
    ids, emb, pairs = _planted()
    out = semantic_duplicates(ids, emb, num_clusters=8, epsilon=0.01, seed=0)
    assert out["duplicate"].sum() == pairs
    for k in range(pairs):
        a, b = k, len(ids) - pairs + k
        assert out["duplicate"][a] != out["duplicate"][b]
        dropped, kept = (a, b) if out["duplicate"][a] else (b, a)
        assert out["kept_id"][dropped] == ids[kept]
        assert out["similarity"][dropped] > 0.99
    assert out["kept_id"][~out["duplicate"]].isna().all()


def test_seeded_deterministic_and_block_size_free() -> None:
    ids, emb, _ = _planted(seed=3)
    first = semantic_duplicates(ids, emb, num_clusters=6, epsilon=0.05, seed=7)
    again = semantic_duplicates(ids, emb, num_clusters=6, epsilon=0.05, seed=7)
    tiny_blocks = semantic_duplicates(ids, emb, num_clusters=6, epsilon=0.05, seed=7, block_rows=5)
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, tiny_blocks)


def test_one_cluster_matches_the_reference_rule() -> None:
    # with one cluster the rule is: order by cos to the mean direction ascending, drop j when
    # max_{i<j} cos(i, j) > 1 - eps (over all earlier rows, dropped or not)
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(60, 4)).astype(np.float32)  # low dim: many close pairs
    ids = [f"r{k:02d}" for k in range(60)]
    out = semantic_duplicates(ids, emb, num_clusters=1, epsilon=0.05, seed=0)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    centroid = unit.mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    order = np.argsort(unit @ centroid, kind="stable")
    sims = unit[order] @ unit[order].T
    expected = np.zeros(60, dtype=bool)
    for j in range(1, 60):
        expected[order[j]] = sims[:j, j].max() > 0.95
    assert 0 < expected.sum() < 60
    assert out["duplicate"].tolist() == expected.tolist()


def test_rows_without_embedding_are_skipped_and_verdict_names_reason() -> None:
    emb = np.array([[1, 0, 0], [1, 1e-4, 0], [np.nan, np.nan, np.nan], [0, 1, 0]], np.float32)
    out = semantic_duplicates(["a", "b", "c", "d"], emb, num_clusters=2, epsilon=0.01, seed=0)
    assert out["duplicate"].tolist() in ([False, True, False, False], [True, False, False, False])
    verdict = semantic_duplicate_verdict(out, pd.Index([10, 11, 12, 13]))
    assert verdict["reason"].dropna().tolist() == ["semantic_duplicate"]
    assert verdict.loc[[12, 13], "reason"].isna().all()
    assert set(SEMDEDUP_REASONS) == {"semantic_duplicate"}
    with pytest.raises(ValueError, match="epsilon"):
        semantic_duplicates(["a"], emb[:1], num_clusters=1, epsilon=1.5, seed=0)
