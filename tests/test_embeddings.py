"""LanceDB embedding store in a real tmp dir: upsert, search, filters with quotes, cleanup."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pandas as pd
import pytest

from storage.embeddings import TABLE, EmbeddingStore, row_id
from tasks.params import StorageParams

DIM = 16


def make_pairs(n: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = pd.DataFrame(
        {
            "id": [f"shapes-{i}" for i in range(n)],
            "caption": [f"a red circle number {i}" for i in range(n)],
            "source": "shapes",
            "label": [None if i % 3 == 0 else "circle" for i in range(n)],
            "split": ["eval" if i % 4 == 0 else "train" for i in range(n)],
        }
    )
    pairs.loc[1, "caption"] = "it's the 'quoted' caption"
    return pairs, vectors


@pytest.fixture
def store(tmp_path: Path) -> EmbeddingStore:
    return EmbeddingStore.from_params(StorageParams(), tmp_path)


def test_upsert_twice_writes_no_duplicates(store: EmbeddingStore, tmp_path: Path) -> None:
    assert store.count() == 0 and store.dim() is None
    pairs, vectors = make_pairs(12)
    assert store.upsert("clip", 1, "image", pairs, vectors) == 12
    assert store.upsert("clip", 1, "image", pairs, vectors) == 12
    assert store.upsert("clip", 1, "text", pairs, vectors) == 12
    assert store.count() == 24
    assert store.count(model_name="clip", model_version=1, modality="image") == 12
    # a plain LanceDB connection sees self-describing rows
    table = lancedb.connect(str(tmp_path / "store" / "lancedb")).open_table(TABLE)
    df = table.to_pandas()
    assert set(df.columns) >= {"id", "model_name", "model_version", "modality", "source_id",
                               "caption", "source", "label", "split", "vector"}  # fmt: skip
    assert df["id"].is_unique
    row = df.set_index("id").loc[row_id("clip", 1, "text", "shapes-1")]
    assert row["caption"] == "it's the 'quoted' caption" and row["source_id"] == "shapes-1"
    assert table.schema.field("vector").metadata[b"doc"].startswith(b"L2-normalised")


def test_search_finds_the_exact_vector_first(store: EmbeddingStore) -> None:
    pairs, vectors = make_pairs(30)
    store.upsert("clip", 1, "image", pairs, vectors)
    store.upsert("clip", 2, "image", pairs, -vectors)  # version 2 points the other way
    hits = store.search(vectors[7], k=5, model_name="clip", model_version=1, modality="image")
    assert list(hits["rank"]) == [1, 2, 3, 4, 5]
    assert hits.loc[0, "source_id"] == "shapes-7"
    assert hits.loc[0, "distance"] == pytest.approx(0.0, abs=1e-5)
    assert hits["distance"].is_monotonic_increasing
    assert set(hits["model_version"]) == {1}
    v2 = store.search(-vectors[7], k=1, model_name="clip", model_version=2, modality="image")
    assert v2.loc[0, "source_id"] == "shapes-7" and v2.loc[0, "model_version"] == 2
    with pytest.raises(ValueError, match="dims"):
        store.search(np.ones(DIM + 1), k=3)


def test_filters_with_quotes_are_literals_not_sql(store: EmbeddingStore) -> None:
    pairs, vectors = make_pairs(8)
    store.upsert("o'brien", 1, "text", pairs, vectors)
    store.upsert("clip", 1, "text", pairs, vectors)
    assert store.count(model_name="o'brien") == 8
    hits = store.search(vectors[0], k=20, model_name="o'brien")
    assert len(hits) == 8 and set(hits["model_name"]) == {"o'brien"}
    # an injection attempt matches nothing instead of widening the filter
    assert store.count(model_name="x' OR '1'='1") == 0
    assert store.search(vectors[0], k=5, model_name="x' OR '1'='1").empty
    # and cleanup of the quoted name touches only its own rows
    store.upsert("o'brien", 2, "text", pairs, vectors)
    assert store.cleanup("o'brien", keep_versions=1) == [1]
    assert store.count(model_name="o'brien") == 8 and store.count(model_name="clip") == 8


def test_cleanup_keeps_newest_versions_and_compacts(store: EmbeddingStore) -> None:
    pairs, vectors = make_pairs(6)
    for version in (1, 2, 3, 4):
        store.upsert("clip", version, "image", pairs, vectors)
    store.upsert("other", 1, "image", pairs, vectors)
    assert store.versions("clip") == [1, 2, 3, 4]
    assert store.cleanup("clip", keep_versions=2) == [1, 2]
    assert store.versions("clip") == [3, 4]
    assert store.count(model_name="clip") == 12 and store.count(model_name="other") == 6
    table = store.db.open_table(TABLE)
    assert len(table.list_versions()) == 1  # old table versions pruned: deleted bytes are gone
    assert store.cleanup("clip", keep_versions=2) == []
    with pytest.raises(ValueError, match="keep_versions"):
        store.cleanup("clip", keep_versions=0)


def test_bad_input_is_rejected(store: EmbeddingStore) -> None:
    pairs, vectors = make_pairs(4)
    with pytest.raises(ValueError, match="modality"):
        store.upsert("clip", 1, "audio", pairs, vectors)
    with pytest.raises(ValueError, match="one vector per pair"):
        store.upsert("clip", 1, "image", pairs, vectors[:3])
    bad = vectors.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        store.upsert("clip", 1, "image", pairs, bad)
    with pytest.raises(ValueError, match="unique"):
        store.upsert("clip", 1, "image", pd.concat([pairs, pairs.iloc[:1]]), np.vstack(
            [vectors, vectors[:1]]))  # fmt: skip
    store.upsert("clip", 1, "image", pairs, vectors)
    with pytest.raises(ValueError, match="holds 16-d vectors"):
        store.upsert("clip", 2, "image", pairs, np.ones((4, 8), np.float32))
