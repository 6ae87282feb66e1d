"""The benchmarks in bench/ run end to end at a tiny size (so they cannot rot).

Behaviour only: their outputs are checked, never their timings.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from bench import curation_memory, metaclip_matching
from bench.synthetic_text import CaptionGenerator, metaclip_like_entries
from bench.text_pool import write_text_pool
from tasks.curation.pool_schema import POOL_SCHEMA


def test_entries_are_numbers_words_then_bigrams() -> None:
    entries = metaclip_like_entries(1500, seed=1, max_words=1000)
    assert len(entries) == len(set(entries)) == 1500
    assert entries[:100] == [str(i) for i in range(100)]
    assert entries[100] == "the"
    bigrams = entries[1100:]
    assert len(bigrams) == 400 and all(len(b.split(" ")) == 2 for b in bigrams)
    assert metaclip_like_entries(1500, seed=1, max_words=1000) == entries


def test_captions_are_seeded_and_zipfian() -> None:
    captions = CaptionGenerator(seed=5).batch(3000)
    assert captions == CaptionGenerator(seed=5).batch(3000)
    assert captions != CaptionGenerator(seed=6).batch(3000)
    assert len(set(captions)) > 2900
    words = Counter(w.lower() for c in captions for w in c.split())
    counts = sorted(words.values(), reverse=True)
    # a head (a few words in many captions) and a long tail of words seen once
    assert counts[0] > 100 * counts[len(counts) // 2]
    assert sum(c == 1 for c in counts) > len(counts) / 2


def test_text_pool_shards(tmp_path: Path) -> None:
    paths = write_text_pool(tmp_path, num_rows=2500, rows_per_shard=1000, seed=3)
    assert [p.name for p in paths] == [f"pool-0000{i}.parquet" for i in range(3)]
    tables = [pq.read_table(p) for p in paths]
    assert [t.num_rows for t in tables] == [1000, 1000, 500]
    assert all(t.schema.equals(POOL_SCHEMA) for t in tables)
    last = tables[2].to_pydict()
    assert last["id"][:2] == ["pool-00002/0", "pool-00002/1"]
    assert set(last["shard"]) == {"pool-00002"} and set(last["split"]) == {"train"}
    assert set(last["source"]) == {"pool"}
    assert all(v is None for col in ("image", "sha256", "width", "height") for v in last[col])
    again = write_text_pool(tmp_path / "again", num_rows=2500, rows_per_shard=1000, seed=3)
    assert pq.read_table(again[1]).equals(tables[1])


def test_metaclip_matching_bench(tmp_path: Path) -> None:
    argv = ["--entries", "3000", "--captions", "1500", "--naive-captions", "40"]
    argv += ["--per-caption-captions", "300", "--repeats", "1", "--no-pin"]
    assert metaclip_matching.main([*argv, "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metaclip_matching.json").read_text())
    assert result["entries"] == 3000 and result["identical_to_naive"]
    assert result["backends_agree_on_all_captions"] and result["matches_per_caption"] > 1
    methods = [r["method"] for r in result["rows"]]
    assert methods[0].startswith("naive loop") and len(methods) == 5
    assert all(r["captions_per_s_per_core"] > 0 for r in result["rows"])
    assert all("x_naive_match_balance" in r for r in result["rows"][1:])


def test_curation_memory_bench(tmp_path: Path) -> None:
    argv = ["--rows", "1200", "--rows-per-shard", "500", "--wordfreq-top-n", "3000"]
    argv += ["--balance-t", "50", "--no-language", "--out-dir", str(tmp_path)]
    assert curation_memory.main(argv) == 0
    result = json.loads((tmp_path / "curation_memory.json").read_text())
    report = result["report"]
    assert result["rows"] == report["rows_in"] == 1200 and result["shards"] == 3
    kept = sum(report["kept"].values())
    assert kept + sum(report["filtered"].values()) == 1200
    assert report["filtered"].get("balanced_out", 0) > 0  # the head really is balanced
    assert result["within_budget"] and result["curate_peak_rss_mib"] > 0
    assert isinstance(result["curate_peak_rss_by_phase_mib"], dict)
