"""Where pass 2 of the streamed curation puts kept rows: output shards and the pair table.

Every kept row goes to `shards/part-*.parquet` (POOL_SCHEMA, via tasks.curation.shards'
ShardWriter: fixed rows per shard, manifest.json written last). The kept rows of the
pipeline's own pair table also go to one Parquet pair table (PAIR_SCHEMA), which is what
the teacher, reinforce, finetune and evaluate stages read.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curation.pool_schema import POOL_SCHEMA
from tasks.curation.shards import ShardWriter
from tasks.pair_table import PAIR_SCHEMA


class KeptRowWriter:
    """Context manager: `write(rows, to_curated)` sends POOL_SCHEMA rows to the outputs."""

    def __init__(self, shards_dir: Path, rows_per_shard: int, curated_table: Path | None) -> None:
        self._shards = ShardWriter(shards_dir, rows_per_shard, schema=POOL_SCHEMA)
        self._curated_path = Path(curated_table) if curated_table else None
        self._curated: pq.ParquetWriter | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> KeptRowWriter:
        self._shards.__enter__()
        if self._curated_path is not None:
            self._curated_path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self._curated_path.with_suffix(".parquet.tmp")
            self._curated = pq.ParquetWriter(self._tmp, PAIR_SCHEMA)
        return self

    def write(self, rows: pa.Table, to_curated: bool = False) -> None:
        self._shards.write(rows.cast(POOL_SCHEMA))
        if to_curated and self._curated is not None:
            self._curated.write_table(rows.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._shards.close()
        else:
            self._shards.abort()
        if self._curated is not None and self._tmp is not None:
            self._curated.close()
            if exc_type is None:
                self._tmp.replace(self._curated_path)
            else:
                self._tmp.unlink(missing_ok=True)
