"""The pool table: what the streamed curation reads, shard by shard.

A pool row is a pair-table row (tasks.pair_table.PAIR_SCHEMA) whose image fields may be
null, because a pool can be text and metadata only (captions to be matched and balanced
before any image is fetched), plus the shard it came from. Readers of tar shards and
Parquet tables (tasks.curation.shards) yield chunks in this schema; curated output shards
use it too, so a curated pool can be curated again.
"""

from __future__ import annotations

import pyarrow as pa

POOL_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # unique in the pool: "<shard>/<key>"
        pa.field("sha256", pa.string(), nullable=True),  # of the image bytes; null: no image
        pa.field("image", pa.binary(), nullable=True),  # encoded PNG/JPEG/WebP bytes
        pa.field("width", pa.int32(), nullable=True),
        pa.field("height", pa.int32(), nullable=True),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # e.g. "pool" or a bundled source
        pa.field("label", pa.string(), nullable=True),
        pa.field("split", pa.string(), nullable=False),  # train | eval
        pa.field("shard", pa.string(), nullable=False),  # the input file the row came from
    ]
)
POOL_COLUMNS = POOL_SCHEMA.names
