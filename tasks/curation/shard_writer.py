"""Write a pool as numbered Parquet shards, streamed, each shard appearing atomically.

`ShardWriter(out_dir)` takes tables of any size through `write()`, writes them in row
groups of `row_group_rows` (buffering less than one), and rolls over to
`part-00000.parquet`, `part-00001.parquet`, ... every `rows_per_shard` rows. A shard is
written to a hidden temp file and renamed when complete, so a reader never sees half a
shard; `close()` then writes `manifest.json` (shards, rows per shard, total, columns).
Leaving the `with` block on an exception removes the temp file and writes no manifest: an
output without a manifest is incomplete. The writer owns `out_dir`: stale `part-*.parquet`
files and the manifest of an earlier run are removed when it starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curation.pool_schema import POOL_SCHEMA

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "clipops-pool-shards/1"


class ShardWriter:
    """Streamed, sharded Parquet output; use as a context manager."""

    def __init__(
        self,
        out_dir: str | Path,
        rows_per_shard: int = 10_000,
        schema: pa.Schema = POOL_SCHEMA,
        *,
        row_group_rows: int = 1000,
        prefix: str = "part",
        compression: str = "zstd",
    ) -> None:
        if rows_per_shard < 1 or row_group_rows < 1:
            raise ValueError(
                f"rows_per_shard ({rows_per_shard}) and row_group_rows ({row_group_rows}) "
                "must be >= 1"
            )
        self.out_dir = Path(out_dir)
        self.rows_per_shard = rows_per_shard
        self.row_group_rows = min(row_group_rows, rows_per_shard)
        self.schema = schema
        self.prefix = prefix
        self.compression = compression
        self.shards: list[dict[str, object]] = []  # {"file", "rows", "bytes"} of finished shards
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._shard_rows = 0  # rows in the open shard, written or buffered
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in [
            *self.out_dir.glob(f"{prefix}-*.parquet"),
            *self.out_dir.glob(f".{prefix}-*.tmp"),
            self.out_dir / MANIFEST_NAME,
        ]:
            stale.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def total_rows(self) -> int:
        return sum(int(s["rows"]) for s in self.shards) + self._shard_rows

    def _conform(self, table: pa.Table) -> pa.Table:
        missing = [name for name in self.schema.names if name not in table.column_names]
        if missing:
            raise ValueError(
                f"table lacks columns {missing}; ShardWriter({self.out_dir}) writes "
                f"{self.schema.names}"
            )
        try:
            return table.select(self.schema.names).cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise ValueError(
                f"table does not fit the schema of {self.out_dir}: {exc}; expected {self.schema}"
            ) from exc

    def write(self, table: pa.Table) -> None:
        """Append `table`'s rows (columns matched by name, cast to the schema)."""
        if self._closed:
            raise RuntimeError(f"ShardWriter({self.out_dir}) is closed")
        table = self._conform(table)
        while table.num_rows:
            room = self.rows_per_shard - self._shard_rows
            piece, table = table.slice(0, room), table.slice(room)
            self._buffer.append(piece)
            self._buffered += piece.num_rows
            self._shard_rows += piece.num_rows
            if self._buffered >= self.row_group_rows:
                self._flush_buffer()
            if self._shard_rows >= self.rows_per_shard:
                self._finish_shard()

    def _flush_buffer(self, *, shard_end: bool = False) -> None:
        """Write whole row groups of `row_group_rows` (and, at a shard's end, the remainder)."""
        n = (
            self._buffered
            if shard_end
            else self._buffered // self.row_group_rows * self.row_group_rows
        )
        if not n:
            return
        if self._writer is None:
            name = f"{self.prefix}-{len(self.shards):05d}.parquet"
            self._tmp = self.out_dir / f".{name}.tmp"
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=self.compression)
        table = pa.concat_tables(self._buffer)
        # Row groups of a fixed size keep a reader's memory bounded whatever the callers wrote.
        self._writer.write_table(table.slice(0, n), row_group_size=self.row_group_rows)
        rest = table.slice(n)
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def _finish_shard(self) -> None:
        self._flush_buffer(shard_end=True)
        if self._writer is None:
            return
        self._writer.close()
        assert self._tmp is not None
        final = self.out_dir / self._tmp.name[1 : -len(".tmp")]
        self._tmp.replace(final)
        self.shards.append(
            {"file": final.name, "rows": self._shard_rows, "bytes": final.stat().st_size}
        )
        self._writer, self._tmp, self._shard_rows = None, None, 0

    def close(self) -> dict[str, object]:
        """Finish the open shard and write the manifest (atomically); returns the manifest."""
        if self._closed:
            return self.manifest()
        self._finish_shard()
        self._closed = True
        manifest = self.manifest()
        tmp = self.out_dir / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.replace(self.out_dir / MANIFEST_NAME)
        return manifest

    def manifest(self) -> dict[str, object]:
        return {
            "format": MANIFEST_FORMAT,
            "rows_per_shard": self.rows_per_shard,
            "total_rows": sum(int(s["rows"]) for s in self.shards),
            "shards": list(self.shards),
            "columns": list(self.schema.names),
            "schema": {f.name: str(f.type) for f in self.schema},
        }

    def abort(self) -> None:
        """Drop the open shard's temp file; finished shards stay, no manifest is written."""
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._writer, self._tmp, self._buffer, self._buffered = None, None, [], 0
        self._closed = True


def read_manifest(out_dir: str | Path) -> dict[str, object]:
    """The manifest of a ShardWriter output; raises FileNotFoundError when it is incomplete."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the shard output in {out_dir} is incomplete (writer not closed)"
        )
    return json.loads(path.read_text())
