"""Pool rows and quarantine rows, checked one sample at a time, emitted in bounded chunks.

Both shard readers (tar_reader, parquet_reader) push what they read into a ChunkBuilder,
which flushes a PoolChunk as soon as `chunk_rows` rows or quarantine rows are pending, so
memory never holds more than one chunk of a shard. The checks shared by both readers
(captions, image bytes) live here so that a caption or an image is judged the same way
whichever file it came from.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFile

from tasks.curation.pool_schema import POOL_SCHEMA
from tasks.pair_table import QUARANTINE_SCHEMA

SPLITS = ("train", "eval")


@dataclass(frozen=True)
class PoolChunk:
    """A bounded slice of one input file: rows in POOL_SCHEMA, rejects in QUARANTINE_SCHEMA."""

    shard: str  # the input file name the chunk came from
    rows: pa.Table
    quarantine: pa.Table


class SampleRejected(ValueError):
    """A sample failed a check; `reason` is a QUARANTINE_REASONS code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_caption(value: object) -> str:
    """The caption as clean text (ends stripped), or raise SampleRejected.

    Bytes must be UTF-8 (strictly: a caption with replacement characters would match
    metadata entries it never contained).
    """
    if value is None:
        raise SampleRejected("caption_missing", "no caption")
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SampleRejected("caption_not_utf8", f"caption bytes: {exc}") from None
    if not isinstance(value, str):
        raise SampleRejected("caption_not_text", f"caption is a {type(value).__name__}")
    text = value.strip()
    if not text:
        raise SampleRejected("caption_empty", "caption is empty or whitespace")
    return text


def probe_image(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes after a cheap but complete integrity check.

    The header gives the size; PNG's `verify()` walks every chunk and checks its CRC; a
    JPEG is decoded at 1/8 scale (`draft`), which still parses the whole entropy-coded
    stream, so truncation is caught at a fraction of a full decode. Other formats
    (WebP, GIF, ...) are decoded fully. Raises SampleRejected with a QUARANTINE_REASONS code.
    """
    if not data:
        raise SampleRejected("image_empty", "zero bytes")
    # PIL's global may have been set elsewhere; a truncated image must fail here, not be padded.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                size = img.size
                if img.format == "PNG":
                    img.verify()
                else:
                    if img.format == "JPEG":
                        img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                    img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SampleRejected("image_too_large", f"too many pixels: {exc}") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise SampleRejected("image_undecodable", f"{type(exc).__name__}: {exc}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return size


class SeenIds:
    """The set of ids read so far, at about 8 bytes an id, to find repeats in a large pool.

    A Python set of a million id strings takes ~100 MB; this keeps each id's 64-bit hash
    in sorted numpy runs that merge as they grow (a log-structured set: lookups are one
    binary search per run, inserts are amortised merges). Hashes are Python's own str hash,
    stable within a process, which is all a single pass needs; two different ids share a
    hash with probability ~n^2 / 2^65 (3e-8 for a million), which would quarantine one
    valid row as a duplicate.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def add(self, ids: list[str]) -> np.ndarray:
        """Record `ids`; True where an id was seen before (earlier in `ids` or in a call before)."""
        hashes = np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(hashes, kind="stable")  # stable: the first of equal ids is kept
        ordered = hashes[order]  # sorted needles make the binary searches cache-friendly
        repeat_sorted = np.zeros(len(ids), dtype=bool)
        repeat_sorted[1:] = ordered[1:] == ordered[:-1]
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, ordered), len(run) - 1)
            repeat_sorted |= run[at] == ordered
        repeat = np.empty(len(ids), dtype=bool)
        repeat[order] = repeat_sorted
        fresh = ordered[~repeat_sorted]  # sorted, unique, in no run yet
        if len(fresh):
            self._runs.append(fresh)
        # Merge like a binary counter: runs halve in size down the list, so there are
        # O(log n) of them and each hash is merged O(log n) times.
        while len(self._runs) > 1 and len(self._runs[-2]) <= len(self._runs[-1]):
            last = self._runs.pop()
            merged = np.concatenate([self._runs[-1], last])
            merged.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
            self._runs[-1] = merged
        return repeat


def empty_rows() -> pa.Table:
    return POOL_SCHEMA.empty_table()


def quarantine_table(rows: list[tuple[str, str, str, str]]) -> pa.Table:
    """(row, source, reason, detail) tuples as a QUARANTINE_SCHEMA table."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in QUARANTINE_SCHEMA]
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, QUARANTINE_SCHEMA, strict=True)],
        schema=QUARANTINE_SCHEMA,
    )


class ChunkBuilder:
    """Collects one shard's rows and quarantine rows; `add_*` yield a chunk when one is full.

    A chunk holds at most `chunk_rows` rows and at most `chunk_rows` quarantine rows, so a
    shard made only of rejects is chunked as well.
    """

    def __init__(self, shard: str, chunk_rows: int) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.shard = shard
        self.chunk_rows = chunk_rows
        self._rows: dict[str, list] = {name: [] for name in POOL_SCHEMA.names}
        self._tables: list[pa.Table] = []  # whole filtered batches (Parquet reader)
        self._pending = 0
        self._quarantine: list[tuple[str, str, str, str]] = []

    def add_row(self, **values: object) -> Iterator[PoolChunk]:
        for name, column in self._rows.items():
            column.append(values[name])
        self._pending += 1
        if self._pending >= self.chunk_rows:
            yield self.flush()

    def add_table(self, table: pa.Table) -> Iterator[PoolChunk]:
        """Add rows already in POOL_SCHEMA; the caller keeps each table <= chunk_rows."""
        if self._pending + table.num_rows > self.chunk_rows:
            yield self.flush()
        self._tables.append(table)
        self._pending += table.num_rows
        if self._pending >= self.chunk_rows:
            yield self.flush()

    def add_quarantine(
        self, row: str, source: str, reason: str, detail: str
    ) -> Iterator[PoolChunk]:
        self._quarantine.append((row, source, reason, detail))
        if len(self._quarantine) >= self.chunk_rows:
            yield self.flush()

    def flush(self) -> PoolChunk:
        """The pending rows and quarantine rows as a chunk (possibly empty); resets the builder."""
        tables = list(self._tables)
        if self._rows["id"]:
            tables.append(pa.Table.from_pydict(self._rows, schema=POOL_SCHEMA))
        rows = pa.concat_tables(tables) if tables else empty_rows()
        chunk = PoolChunk(self.shard, rows, quarantine_table(self._quarantine))
        self._rows = {name: [] for name in POOL_SCHEMA.names}
        self._tables = []
        self._pending = 0
        self._quarantine = []
        return chunk

    def finish(self) -> Iterator[PoolChunk]:
        """The last partial chunk, if anything is pending."""
        if self._pending or self._quarantine:
            yield self.flush()
