"""Stream Parquet pair tables into pool chunks, batch by batch.

Any Parquet table with a `caption` column is a pool: optional `id` (or `key`), `image`
(encoded bytes, or a struct with a `bytes` field as Hugging Face datasets store it),
`sha256`, `width`, `height`, `label`, `source`, `split`. A table without images (the
caption-only pools that metadata matching and balancing run on) gives rows whose image
fields are null. Rows are read with `ParquetFile.iter_batches(batch_size=chunk_rows)`, so
memory holds one batch; caption checks run as Arrow compute over the batch, images (when
present) are checked and hashed one by one.

Ids are `<file stem>/<id, key or row index>`, except in a table that already has every
pool column (a pool written by ShardWriter): its ids and shard names are kept, so a curated
pool curated again keeps its ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.curation.pool_rows import (
    SPLITS,
    ChunkBuilder,
    PoolChunk,
    SampleRejected,
    SeenIds,
    check_caption,
    probe_image,
)
from tasks.curation.pool_schema import POOL_COLUMNS, POOL_SCHEMA
from tasks.curation.tar_reader import shard_stem

_OPTIONAL = ("id", "key", "image", "sha256", "width", "height", "label", "source", "split")


class _TableError(ValueError):
    """The table as a whole cannot be read as a pool (one quarantine row for the file)."""


def _image_bytes_column(column: pa.Array) -> pa.Array:
    """The encoded bytes of an `image` column: binary as is, HF's {bytes, path} struct unpacked."""
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            raise _TableError(f"image column is a struct without a 'bytes' field: {column.type}")
        column = pc.struct_field(column, "bytes")
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise _TableError(f"image column has type {column.type}; expected binary image bytes")
    return column


def _caption_problems(column: pa.Array) -> tuple[pa.Array, dict[int, tuple[str, str]]]:
    """(captions as stripped strings, {row: (reason, detail)} for the rejected ones).

    String columns are checked with Arrow compute (the common, fast path); binary columns
    are decoded row by row (strict UTF-8); any other type rejects every row.
    """
    if pa.types.is_dictionary(column.type):  # dictionary-encoded text (common for labels)
        column = column.dictionary_decode()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = pc.utf8_trim_whitespace(column.cast(pa.string()))
        missing = pc.is_null(text)
        empty = pc.equal(text, "")
        problems = {
            int(i): ("caption_missing", "caption is null")
            for i in np.flatnonzero(missing.to_numpy(zero_copy_only=False))
        }
        for i in np.flatnonzero(pc.fill_null(empty, False).to_numpy(zero_copy_only=False)):
            problems[int(i)] = ("caption_empty", "caption is empty or whitespace")
        return text, problems
    values: list[str | None] = []
    problems = {}
    for i, value in enumerate(column.to_pylist()):
        try:
            values.append(check_caption(value))
        except SampleRejected as exc:
            values.append(None)
            problems[i] = (exc.reason, exc.detail)
    return pa.array(values, type=pa.string()), problems


class _ParquetTableReader:
    """Reads one Parquet pair table; `chunks()` yields its PoolChunks."""

    def __init__(
        self,
        path: Path,
        *,
        chunk_rows: int,
        source: str,
        split: str,
        with_images: bool,
        max_member_bytes: int,
        seen_ids: SeenIds,
    ) -> None:
        self.path = path
        self.stem = shard_stem(path)
        self.chunk_rows = chunk_rows
        self.source = source
        self.split = split
        self.with_images = with_images
        self.max_image_bytes = max_member_bytes
        self.builder = ChunkBuilder(path.name, chunk_rows)
        self.seen_ids = seen_ids
        self.keeps_ids = False
        self.id_column: str | None = None

    def chunks(self) -> Iterator[PoolChunk]:
        try:
            parquet = pq.ParquetFile(self.path)
            columns = self._columns(parquet.schema_arrow)
        except _TableError as exc:
            yield from self._file_quarantine(str(exc))
            yield from self.builder.finish()
            return
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... on a bad file
            yield from self._file_quarantine(f"not a readable Parquet file: {exc}")
            yield from self.builder.finish()
            return
        start = 0
        try:
            # One thread: with small batches the thread pool costs more than it saves (5x).
            batches = parquet.iter_batches(
                batch_size=self.chunk_rows, columns=columns, use_threads=False
            )
            for batch in batches:
                yield from self._batch(pa.Table.from_batches([batch]), start)
                start += batch.num_rows
        except _TableError as exc:
            yield from self._file_quarantine(f"from row {start}: {exc}")
        except (OSError, pa.ArrowException) as exc:  # a corrupt page or a cut file
            yield from self._file_quarantine(f"unreadable from row {start}: {exc}")
        yield from self.builder.finish()

    def _file_quarantine(self, detail: str) -> Iterator[PoolChunk]:
        yield from self.builder.add_quarantine(
            self.path.name, self.source, "shard_unreadable", f"{self.path}: {detail}"
        )

    def _columns(self, schema: pa.Schema) -> list[str]:
        """Which columns to read; raises _TableError when the table is not a pool."""
        names = schema.names
        if "caption" not in names:
            raise _TableError(f"no 'caption' column (columns: {names}); a pool table needs one")
        self.keeps_ids = set(POOL_COLUMNS) <= set(names)
        self.id_column = next((c for c in ("id", "key") if c in names), None)
        wanted = ["caption", *(c for c in _OPTIONAL if c in names)]
        if self.keeps_ids:
            wanted.append("shard")
        has_metadata = {"sha256", "width", "height"} <= set(names)
        if "image" in wanted and not self.with_images and has_metadata:
            wanted.remove("image")  # hash and size are already there: skip the heavy column
        return wanted

    def _ids(self, table: pa.Table, start: int) -> pa.Array:
        if self.id_column is None:
            index = pa.array(np.arange(start, start + table.num_rows)).cast(pa.string())
            return pc.binary_join_element_wise(f"{self.stem}/", index, "")
        ids = table.column(self.id_column).combine_chunks().cast(pa.string())
        if self.keeps_ids:
            return ids
        return pc.binary_join_element_wise(f"{self.stem}/", ids, "")

    def _batch(self, table: pa.Table, start: int) -> Iterator[PoolChunk]:
        """Check one batch; its good rows go to the builder as one table, bad ones to quarantine."""
        n = table.num_rows
        ids = self._ids(table, start)
        captions, problems = _caption_problems(table.column("caption").combine_chunks())
        if self.id_column is not None:
            self._check_ids(ids, problems)
        sources = self._text_column(table, "source", self.source)
        splits = self._text_column(table, "split", self.split)
        if "split" in table.column_names:
            bad = pc.invert(pc.is_in(splits, value_set=pa.array(SPLITS)))
            for i in np.flatnonzero(bad.to_numpy(zero_copy_only=False)):
                problems.setdefault(
                    int(i), ("split_invalid", f"split {splits[int(i)].as_py()!r} not in {SPLITS}")
                )
        images, sha256, width, height = self._image_fields(table, problems)
        labels = (
            table.column("label").combine_chunks().cast(pa.string())
            if "label" in table.column_names
            else pa.nulls(n, pa.string())
        )
        shards = (
            pc.fill_null(table.column("shard").combine_chunks().cast(pa.string()), self.path.name)
            if self.keeps_ids
            else pa.array([self.path.name] * n, pa.string())
        )
        rows = pa.Table.from_arrays(
            [ids, sha256, images, width, height, captions, sources, labels, splits, shards],
            names=POOL_COLUMNS,
        )
        if problems:
            keep = np.ones(n, dtype=bool)
            keep[list(problems)] = False
            rows = rows.filter(pa.array(keep))
        yield from self.builder.add_table(rows.cast(POOL_SCHEMA))
        for i in sorted(problems):
            reason, detail = problems[i]
            row_id = ids[i].as_py() or f"{self.stem}/{start + i}"
            source = sources[i].as_py() or self.source
            yield from self.builder.add_quarantine(row_id, source, reason, detail)

    def _text_column(self, table: pa.Table, name: str, default: str) -> pa.Array:
        if name not in table.column_names:
            return pa.array([default] * table.num_rows, pa.string())
        column = table.column(name).combine_chunks().cast(pa.string())
        return pc.fill_null(column, default)

    def _check_ids(self, ids: pa.Array, problems: dict[int, tuple[str, str]]) -> None:
        """Null ids and ids used by an earlier row of the pool are rejected (the first is kept)."""
        present = np.flatnonzero(pc.is_valid(ids).to_numpy(zero_copy_only=False))
        if len(present) < len(ids):
            for i in np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False)):
                problems.setdefault(int(i), ("id_missing", f"{self.id_column} is null"))
        values = ids.take(pa.array(present)).to_pylist()
        for i in present[self.seen_ids.add(values)]:
            detail = f"id {ids[int(i)].as_py()!r} repeats an earlier row of the pool"
            problems.setdefault(int(i), ("duplicate_id", detail))

    def _image_fields(
        self, table: pa.Table, problems: dict[int, tuple[str, str]]
    ) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
        """(image, sha256, width, height) columns; images are probed and hashed row by row."""
        n = table.num_rows
        names = table.column_names
        given_sha = (
            table.column("sha256").combine_chunks().cast(pa.string()).to_pylist()
            if "sha256" in names
            else [None] * n
        )
        if "image" not in names:
            width = self._int_column(table, "width")
            height = self._int_column(table, "height")
            return pa.nulls(n, pa.binary()), pa.array(given_sha, pa.string()), width, height
        column = _image_bytes_column(table.column("image").combine_chunks())
        images = column.to_pylist()
        sha256: list[str | None] = [None] * n
        width: list[int | None] = [None] * n
        height: list[int | None] = [None] * n
        for i, data in enumerate(images):
            if data is None or i in problems:
                continue  # a text-only row, or already rejected: nothing to check
            try:
                if len(data) > self.max_image_bytes:
                    raise SampleRejected(
                        "image_too_large",
                        f"{len(data)} bytes > max_member_bytes={self.max_image_bytes}",
                    )
                width[i], height[i] = probe_image(data)
                sha256[i] = hashlib.sha256(data).hexdigest()
                expected = given_sha[i]
                if expected and expected.lower() != sha256[i]:
                    raise SampleRejected(
                        "sha256_mismatch", f"sha256 {sha256[i]} != given {expected}"
                    )
            except SampleRejected as exc:
                problems[i] = (exc.reason, exc.detail)
        if not self.with_images:
            column = pa.nulls(n, pa.binary())
        return (
            column.cast(pa.binary()),
            pa.array(sha256, pa.string()),
            pa.array(width, pa.int32()),
            pa.array(height, pa.int32()),
        )

    @staticmethod
    def _int_column(table: pa.Table, name: str) -> pa.Array:
        """An integer column as int32, or nulls when absent or not integers."""
        n = table.num_rows
        if name not in table.column_names:
            return pa.nulls(n, pa.int32())
        column = table.column(name).combine_chunks()
        if not pa.types.is_integer(column.type):
            return pa.nulls(n, pa.int32())
        # A size outside int32 (or negative) is not a size: null rather than an overflow.
        valid = pc.and_(pc.greater_equal(column, 0), pc.less_equal(column, 2**31 - 1))
        return pc.if_else(valid, column, None).cast(pa.int32())


def iter_parquet_table(
    path: Path,
    *,
    chunk_rows: int = 1000,
    max_member_bytes: int = 20_000_000,
    source: str = "pool",
    split: str = "train",
    with_images: bool = True,
    seen_ids: SeenIds | None = None,
) -> Iterator[PoolChunk]:
    """Stream one Parquet pair table as PoolChunks (see the module docstring for the rules).

    `seen_ids`, shared across the tables of a pool, finds ids repeated across files (a
    table's ids are kept as they are when it is a pool written by ShardWriter).
    """
    reader = _ParquetTableReader(
        Path(path),
        chunk_rows=chunk_rows,
        source=source,
        split=split,
        with_images=with_images,
        max_member_bytes=max_member_bytes,
        seen_ids=SeenIds() if seen_ids is None else seen_ids,
    )
    yield from reader.chunks()
