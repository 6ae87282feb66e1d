"""Chunked reading of the curation inputs: the pipeline's pair table, then the pool.

The pair table (ingest's output, already validated by gate_raw) is read batch by batch with
its ids kept, because downstream stages and the registry know its rows by those ids. Every
other input goes through `tasks.curation.shards.iter_pool` (webdataset / img2dataset tar
shards and Parquet tables, hostile members quarantined, ids "<file stem>/<key>"). Passes
over the pool call `read_inputs` with the same arguments, so row ordinals agree between
passes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curation.pool_schema import POOL_SCHEMA
from tasks.curation.shards import PoolChunk, iter_pool
from tasks.errors import StageError
from tasks.pair_table import PAIR_COLUMNS, QUARANTINE_SCHEMA


def iter_pair_table(path: Path, chunk_rows: int, with_images: bool) -> Iterator[PoolChunk]:
    """The canonical pair table as PoolChunks, ids unchanged, shard = the file name."""
    parquet = pq.ParquetFile(path)
    missing = set(PAIR_COLUMNS) - set(parquet.schema_arrow.names)
    if missing:
        raise StageError(f"{path} lacks columns {sorted(missing)}: rerun ingest")
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=PAIR_COLUMNS):
        columns = []
        for field in POOL_SCHEMA:
            if field.name == "shard":
                columns.append(pa.array([path.name] * batch.num_rows, pa.string()))
            elif field.name == "image" and not with_images:
                columns.append(pa.nulls(batch.num_rows, field.type))
            else:
                columns.append(batch.column(field.name).cast(field.type))
        rows = pa.Table.from_arrays(columns, schema=POOL_SCHEMA)
        yield PoolChunk(path.name, rows, QUARANTINE_SCHEMA.empty_table())


def read_inputs(
    pair_table: Path | None,
    pool: Sequence[Path],
    chunk_rows: int,
    max_member_bytes: int,
    with_images: bool = True,
) -> Iterator[tuple[bool, PoolChunk]]:
    """(from the pair table?, chunk) for the pair table's chunks, then every pool chunk."""
    if pair_table is not None:
        for chunk in iter_pair_table(Path(pair_table), chunk_rows, with_images):
            yield True, chunk
    if pool:
        chunks = iter_pool(
            [Path(p) for p in pool],
            chunk_rows=chunk_rows,
            max_member_bytes=max_member_bytes,
            with_images=with_images,
        )
        for chunk in chunks:
            yield False, chunk
