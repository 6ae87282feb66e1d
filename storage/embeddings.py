"""The embedding store: one LanceDB table `embeddings` of image and caption vectors.

Each row says what it is, so a plain `lancedb.connect(uri).open_table("embeddings")` in a
notebook is self-describing: `id` = "{model_name}:{model_version}:{modality}:{source_id}",
the model name and version, the modality (image | text), the pair it came from (source_id,
caption, source, label, split) and the L2-normalised vector. Writes are upserts on `id`, so
re-running the register stage writes no duplicates. Filters are built with `lancedb.expr`
(typed literals), never by pasting user text into SQL.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
from lancedb.expr import Expr, col, lit

TABLE = "embeddings"
MODALITIES = ("image", "text")

# Field docs travel in the Arrow schema metadata, so the table describes itself.
_FIELD_DOCS = {
    "id": "model_name:model_version:modality:source_id (the upsert key)",
    "model_name": "registered model name (registry models.name)",
    "model_version": "registered model version (registry models.version)",
    "modality": "image | text: which tower produced the vector",
    "source_id": "id of the pair in the curated table (pairs.parquet id)",
    "caption": "the pair's caption",
    "source": "dataset the pair came from (digits | textiles | shapes | user)",
    "label": "class name where known",
    "split": "train | eval",
    "vector": "L2-normalised embedding; search with cosine distance",
}


def embedding_schema(dim: int) -> pa.Schema:
    """The Arrow schema of the `embeddings` table for `dim`-dimensional vectors."""
    if dim < 1:
        raise ValueError(f"embedding dimension must be >= 1, got {dim}")
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=True),
        pa.field("source", pa.string(), nullable=True),
        pa.field("label", pa.string(), nullable=True),
        pa.field("split", pa.string(), nullable=True),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
    ]
    fields = [f.with_metadata({"doc": _FIELD_DOCS[f.name]}) for f in fields]
    return pa.schema(fields, metadata={"clipops.table": "image and caption embeddings per model"})


def row_id(model_name: str, model_version: int, modality: str, source_id: str) -> str:
    """The upsert key of one embedding row."""
    return f"{model_name}:{model_version}:{modality}:{source_id}"


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")


def _filter(
    model_name: str | None = None, model_version: int | None = None, modality: str | None = None
) -> Expr | None:
    """AND of the given equality filters, as a typed lancedb expression (quotes are safe)."""
    parts: list[Expr] = []
    if model_name is not None:
        parts.append(col("model_name") == lit(str(model_name)))
    if model_version is not None:
        parts.append(col("model_version") == lit(int(model_version)))
    if modality is not None:
        _check_modality(modality)
        parts.append(col("modality") == lit(modality))
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out = out & part
    return out


class EmbeddingStore:
    """The `embeddings` table in the LanceDB database at `uri`."""

    def __init__(self, uri: str | Path) -> None:
        self.uri = str(uri)
        self.db = lancedb.connect(self.uri)

    @classmethod
    def from_params(cls, storage: Any, root: str | Path) -> EmbeddingStore:
        """The store at `StorageParams.lancedb_uri`, a relative path taken under `root`."""
        uri = str(storage.lancedb_uri)
        if "://" not in uri and not Path(uri).is_absolute():
            uri = str(Path(root).resolve() / uri)
        return cls(uri)

    def _table(self, create_dim: int | None = None) -> Any:
        """Open the table; create it for `create_dim`-d vectors if it does not exist yet."""
        if TABLE in self.db.list_tables().tables:
            return self.db.open_table(TABLE)
        if create_dim is None:
            return None
        return self.db.create_table(TABLE, schema=embedding_schema(create_dim), exist_ok=True)

    def dim(self) -> int | None:
        """Vector dimension of the table, or None before the first write."""
        table = self._table()
        return None if table is None else table.schema.field("vector").type.list_size

    def upsert(
        self,
        model_name: str,
        model_version: int,
        modality: str,
        pairs: pd.DataFrame,
        vectors: np.ndarray,
    ) -> int:
        """Upsert one vector per pair (columns id, caption, source, label, split); return rows.

        Rows are keyed by `row_id`, so writing the same model version again replaces rows
        instead of adding duplicates.
        """
        _check_modality(modality)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(pairs):
            raise ValueError(
                f"need one vector per pair: {len(pairs)} pairs, vectors of shape {vectors.shape}"
            )
        missing = {"id", "caption", "source", "label", "split"} - set(pairs.columns)
        if missing:
            raise ValueError(f"pairs lack columns {sorted(missing)}")
        if not np.isfinite(vectors).all():
            raise ValueError(f"{model_name} v{model_version} {modality}: non-finite vector values")
        if pairs["id"].duplicated().any():
            dup = pairs.loc[pairs["id"].duplicated(), "id"].iloc[0]
            raise ValueError(f"pair ids must be unique; {dup!r} appears twice")
        if len(pairs) == 0:
            return 0
        dim = vectors.shape[1]
        table = self._table(create_dim=dim)
        stored = table.schema.field("vector").type.list_size
        if stored != dim:
            raise ValueError(
                f"the embeddings table at {self.uri} holds {stored}-d vectors but "
                f"{model_name} v{model_version} has {dim}-d ones: point storage.lancedb_uri "
                "at a new folder (or drop the table) to store models of another embed_dim"
            )
        ids = [row_id(model_name, model_version, modality, str(s)) for s in pairs["id"]]
        schema = embedding_schema(dim)
        data = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "model_name": pa.array([model_name] * len(ids), pa.string()),
                "model_version": pa.array([int(model_version)] * len(ids), pa.int64()),
                "modality": pa.array([modality] * len(ids), pa.string()),
                "source_id": pa.array(pairs["id"].astype(str).tolist(), pa.string()),
                "caption": pa.array(_strings(pairs["caption"]), pa.string()),
                "source": pa.array(_strings(pairs["source"]), pa.string()),
                "label": pa.array(_strings(pairs["label"]), pa.string()),
                "split": pa.array(_strings(pairs["split"]), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), pa.float32()), dim
                ),
            },
            schema=schema,
        )
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )
        return len(ids)

    def count(
        self,
        model_name: str | None = None,
        model_version: int | None = None,
        modality: str | None = None,
    ) -> int:
        """Rows matching the filters (0 before the first write)."""
        table = self._table()
        if table is None:
            return 0
        where = _filter(model_name, model_version, modality)
        # count_rows takes SQL text only; Expr.to_sql() renders literals with quotes escaped.
        return table.count_rows(where.to_sql() if where is not None else None)

    def versions(self, model_name: str) -> list[int]:
        """Model versions of `model_name` that have rows, ascending."""
        table = self._table()
        if table is None:
            return []
        rows = (
            table.search()
            .where(_filter(model_name=model_name))
            .select(["model_version"])
            .limit(None)
            .to_arrow()
        )
        return sorted({int(v) for v in rows.column("model_version").to_pylist()})

    def source_ids(self, model_name: str, model_version: int, modality: str) -> set[str]:
        """Source (pair) ids stored for one model version and modality."""
        table = self._table()
        if table is None:
            return set()
        rows = (
            table.search()
            .where(_filter(model_name, model_version, modality))
            .select(["source_id"])
            .limit(None)
            .to_arrow()
        )
        return set(rows.column("source_id").to_pylist())

    def prune(self, model_name: str, model_version: int, keep_source_ids: set[str]) -> int:
        """Delete this version's rows whose pair is no longer in `keep_source_ids`; return n."""
        table = self._table()
        if table is None:
            return 0
        stale = set()
        for modality in MODALITIES:
            stale |= self.source_ids(model_name, model_version, modality) - keep_source_ids
        if not stale:
            return 0
        where = _filter(model_name, model_version) & col("source_id").isin(sorted(stale))
        before = table.count_rows()
        table.delete(where)
        return before - table.count_rows()

    def cleanup(
        self, model_name: str, keep_versions: int, protect: set[int] | None = None
    ) -> list[int]:
        """Delete rows of all but the newest `keep_versions` versions; compact; return removed.

        Versions in `protect` (e.g. the one `production` points at) are never removed, so an
        alias always has embeddings to search even after several newer versions failed a gate.
        """
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        table = self._table()
        if table is None:
            return []
        versions = self.versions(model_name)
        removed = [v for v in versions[:-keep_versions] if v not in (protect or set())]
        if removed:
            table.delete(_filter(model_name=model_name) & col("model_version").isin(removed))
        # cleanup_older_than=0 drops old table versions too, so the deleted vectors' bytes
        # really go. LanceDB warns that concurrent readers of old versions would fail; the
        # register stage is the only writer and runs alone, so the warning is expected here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
            table.optimize(cleanup_older_than=timedelta(0))
        return removed

    def search(
        self,
        vector: np.ndarray,
        k: int = 10,
        model_name: str | None = None,
        model_version: int | None = None,
        modality: str | None = None,
    ) -> pd.DataFrame:
        """The k nearest rows by cosine distance, with a 1-based `rank` column, nearest first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        table = self._table()
        if table is None:
            raise LookupError(f"the embedding store at {self.uri} is empty: register a model")
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        stored = self.dim()
        if query.shape[0] != stored:
            raise ValueError(f"query vector has {query.shape[0]} dims; the table holds {stored}")
        builder = table.search(query, vector_column_name="vector").distance_type("cosine")
        where = _filter(model_name, model_version, modality)
        if where is not None:
            # prefilter: filter first, then take the k nearest among the matching rows.
            builder = builder.where(where, prefilter=True)
        result = builder.limit(k).to_pandas()
        result = result.rename(columns={"_distance": "distance"})
        result.insert(0, "rank", range(1, len(result) + 1))
        return result.reset_index(drop=True)


def _strings(values: pd.Series) -> list[str | None]:
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
