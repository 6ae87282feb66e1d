"""Chunked reading of the pool inputs for the streamed curation.

`read_pool` yields `PoolChunk`s (rows in POOL_SCHEMA plus quarantined members) from every
input in order, through `tasks.curation.shards.iter_pool` (webdataset / img2dataset tar
shards and Parquet tables, hostile members quarantined). Until that reader is available,
Parquet pair tables are read here directly (tar shards then raise a StageError). Passes over
the pool call it with the same arguments, so row ordinals agree between passes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curation.pool_schema import POOL_SCHEMA
from tasks.errors import StageError
from tasks.pair_table import QUARANTINE_SCHEMA

try:  # the full reader (tar shards, hostile members) lives on its own branch until merged
    from tasks.curation.shards import PoolChunk, iter_pool
except ImportError:  # pragma: no cover - replaced once tasks.curation.shards lands
    iter_pool = None

    @dataclass
    class PoolChunk:  # type: ignore[no-redef]
        shard: str
        rows: pa.Table
        quarantine: pa.Table


def _iter_parquet(path: Path, chunk_rows: int, with_images: bool) -> Iterator[PoolChunk]:
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        columns = []
        for field in POOL_SCHEMA:
            if field.name == "shard":
                columns.append(pa.array([str(path)] * batch.num_rows, pa.string()))
            elif field.name in names and (with_images or field.name != "image"):
                columns.append(batch.column(field.name).cast(field.type))
            else:
                columns.append(pa.nulls(batch.num_rows, field.type))
        yield PoolChunk(
            str(path),
            pa.Table.from_arrays(columns, schema=POOL_SCHEMA),
            QUARANTINE_SCHEMA.empty_table(),
        )


def read_pool(
    inputs: Sequence[Path], chunk_rows: int, max_member_bytes: int, with_images: bool = True
) -> Iterator[PoolChunk]:
    """Every chunk of every input, in input order."""
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.exists():
            raise StageError(f"curate input {path} not found: check curate.pool in params.yaml")
    if iter_pool is not None:
        yield from iter_pool(
            paths, chunk_rows=chunk_rows, max_member_bytes=max_member_bytes, with_images=with_images
        )
        return
    for path in paths:
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        for file in files:
            if file.suffix != ".parquet":
                raise StageError(f"{file}: only Parquet inputs are readable in this build")
            yield from _iter_parquet(file, chunk_rows, with_images)
