"""The streamed curation driver on real pools: text-only tables, tar shards, hostile shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tasks.curation.balancing import t_for_tail_share
from tasks.curation.pool_fixtures import (
    write_caption_table,
    write_hostile_tar,
    write_tar_shards,
)
from tasks.curation.report import check_identity
from tasks.curation.shards import ShardWriter, iter_pool
from tasks.curation.stream import curate_pool
from tasks.params import CurateParams

TEXT = dict(
    wordfreq_top_n=50, bigram_sample_rows=800, bigram_min_count=5, bigram_min_pmi=2.0, balance_t=60
)


def identity(report: dict) -> int:
    return (
        sum(report["kept"].values())
        + sum(report["filtered"].values())
        + sum(report["quarantined"].values())
    )


@pytest.fixture(scope="module")
def text_pools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 3,000 caption rows as one shard and as three (ids kept by the pool format)."""
    root = tmp_path_factory.mktemp("text_pool")
    table = write_caption_table(root / "captions.parquet", 3000, seed=4)
    rows = [chunk.rows for chunk in iter_pool([table], chunk_rows=1000)]
    out = {}
    for name, per_shard in [("one", 3000), ("three", 1000)]:
        with ShardWriter(root / name, per_shard) as writer:
            for chunk in rows:
                writer.write(chunk)
        out[name] = root / name
    return out


def test_sharding_and_chunking_do_not_change_the_result(
    text_pools: dict[str, Path], tmp_path: Path
) -> None:
    reports, kept, removed = {}, {}, {}
    for name, chunk_rows in [("one", 700), ("three", 256)]:
        params = CurateParams(**TEXT, chunk_rows=chunk_rows, shard_rows=900)
        reports[name] = curate_pool([text_pools[name]], tmp_path / name, params)
        kept[name] = pd.read_parquet(tmp_path / name / "kept_ids.parquet")
        removed[name] = pd.read_parquet(tmp_path / name / "removed.parquet")
    assert len(list(text_pools["three"].glob("part-*.parquet"))) == 3
    assert sorted(kept["one"]["id"]) == sorted(kept["three"]["id"])
    assert (
        removed["one"]
        .sort_values("id")
        .reset_index(drop=True)
        .equals(removed["three"].sort_values("id").reset_index(drop=True))
    )
    one = reports["one"]
    assert one["rows_in"] == 3000 == identity(one)
    assert one["filtered"]["balanced_out"] > 100  # shape captions repeat: heads are sampled
    assert json.loads((tmp_path / "one" / "metadata.json").read_text()) == json.loads(
        (tmp_path / "three" / "metadata.json").read_text()
    )
    assert one["metadata"]["bigrams"] > 0 and one["metadata"]["bigram_sample_captions"] == 800
    # text-only rows skip the image steps, and the skipped model steps say why
    assert one["steps"]["semantic_duplicate"] == "skipped: no score_model"
    # output shards: kept rows only, readable as a pool again with the same ids
    out_chunks = iter_pool([tmp_path / "one" / "shards"])
    out_ids = [i for chunk in out_chunks for i in chunk.rows["id"].to_pylist()]
    assert sorted(out_ids) == sorted(kept["one"]["id"])
    manifest = json.loads((tmp_path / "one" / "shards" / "manifest.json").read_text())
    assert manifest["total_rows"] == len(out_ids) and all(
        s["rows"] <= 900 for s in manifest["shards"]
    )


def test_t_from_tail_share_on_the_pool(text_pools: dict[str, Path], tmp_path: Path) -> None:
    params = CurateParams(**{**TEXT, "balance_t": None, "balance_tail_share": 0.4})
    report = curate_pool([text_pools["three"]], tmp_path, params)
    balance = pq.read_table(tmp_path / "balance.parquet").to_pandas()
    entries = np.concatenate(balance["entries"].to_numpy())
    counts = np.bincount(entries, minlength=report["entries"])
    assert report["t"] == t_for_tail_share(counts, 0.4)
    assert report["tail_share_at_t"] >= 0.4 and report["t_source"].endswith("0.4")
    with pytest.raises(ValueError, match="exactly one"):
        CurateParams(balance_t=10, balance_tail_share=0.5)


def test_hostile_shards_are_quarantined_and_accounted(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    write_tar_shards(pool, num_shards=2, samples_per_shard=8, seed=1, image_size=32)
    cases = [
        write_hostile_tar(pool / f"hostile_{kind}.tar", kind, seed=i)
        for i, kind in enumerate(["parent_path", "symlink", "truncated", "undecodable_image"])
    ]
    params = CurateParams(wordfreq_top_n=200, bigram_sample_rows=0, balance_t=1000, chunk_rows=5)
    report = curate_pool([pool], tmp_path / "out", params)
    assert report["rows_in"] == identity(report)
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    for case in cases:
        assert case.reason in set(quarantine["reason"]), case.kind
        assert not any(p.exists() for p in case.escape_targets)
    assert sum(report["quarantined"].values()) == len(quarantine)
    kept = pd.read_parquet(tmp_path / "out" / "kept_ids.parquet")
    assert len(kept) == report["kept"]["train"] > 0 and not kept["pair_table"].any()
    # rows_in counts every good row plus every quarantined member
    rows = sum(c.rows.num_rows for c in iter_pool([pool], chunk_rows=5))
    assert report["rows_in"] == rows + len(quarantine)
    check_identity(report)
