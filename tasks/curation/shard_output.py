"""Where pass 2 of the streamed curation puts kept rows: output shards and the pair table.

Every kept row goes to `shards/part-*.parquet` (POOL_SCHEMA, via tasks.curation.shards'
ShardWriter: fixed rows per shard, manifest.json written last). The kept rows of the
pipeline's own pair table also go to one Parquet pair table (PAIR_SCHEMA), which is what
the teacher, reinforce, finetune and evaluate stages read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curation.pool_schema import POOL_SCHEMA
from tasks.pair_table import PAIR_SCHEMA

try:
    from tasks.curation.shards import ShardWriter
except ImportError:  # pragma: no cover - replaced once tasks.curation.shards lands

    class ShardWriter:  # type: ignore[no-redef]
        """Minimal stand-in: part-00000.parquet... of `rows_per_shard` rows + manifest.json."""

        def __init__(self, out_dir: Path, rows_per_shard: int, schema: pa.Schema = POOL_SCHEMA):
            self.out_dir, self.rows_per_shard, self.schema = Path(out_dir), rows_per_shard, schema
            self._pending: list[pa.Table] = []
            self._pending_rows = 0
            self._parts: list[dict] = []

        def __enter__(self) -> ShardWriter:
            shutil.rmtree(self.out_dir, ignore_errors=True)
            self.out_dir.mkdir(parents=True)
            return self

        def write(self, table: pa.Table) -> None:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            while self._pending_rows >= self.rows_per_shard:
                self._flush(self.rows_per_shard)

        def _flush(self, rows: int) -> None:
            table = pa.concat_tables(self._pending)
            part, rest = table.slice(0, rows), table.slice(rows)
            name = f"part-{len(self._parts):05d}.parquet"
            pq.write_table(part, self.out_dir / name)
            self._parts.append({"file": name, "rows": part.num_rows})
            self._pending, self._pending_rows = [rest], rest.num_rows

        def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
            if exc_type is None:
                if self._pending_rows:
                    self._flush(self._pending_rows)
                (self.out_dir / "manifest.json").write_text(json.dumps({"shards": self._parts}))


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
        self._shards.__exit__(exc_type, exc, tb)
        if self._curated is not None and self._tmp is not None:
            self._curated.close()
            if exc_type is None:
                self._tmp.replace(self._curated_path)
            else:
                self._tmp.unlink(missing_ok=True)
