"""The canonical pair table and the quarantine table: schemas and Parquet I/O.

Every stage after ingest reads pairs through these helpers, so the column set is
declared once. Images travel as encoded bytes (PNG/JPEG); they are decoded once per
training run, not per step.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PAIR_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),  # of the stored image bytes
        pa.field("image", pa.binary(), nullable=False),  # encoded PNG/JPEG
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # digits | textiles | shapes | user
        pa.field("label", pa.string(), nullable=True),  # class name where known
        pa.field("split", pa.string(), nullable=False),  # train | eval
    ]
)
PAIR_COLUMNS = PAIR_SCHEMA.names

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("row", pa.string(), nullable=False),  # where it came from: source + file/index
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # a stable code, e.g. image_undecodable
        pa.field("detail", pa.string(), nullable=False),  # human-readable message
    ]
)
QUARANTINE_COLUMNS = QUARANTINE_SCHEMA.names

# Reason codes a person can filter on. Adding one is fine; renaming breaks reports.
# Ingest's codes (each reachable from ingest, as its test checks) ...
INGEST_QUARANTINE_REASONS = {
    "image_missing": "the image named in the captions file does not exist, or a pool sample "
    "(tar key, sidecar row) has no image member",
    "image_empty": "the image file has zero bytes",
    "image_too_large": "the image file exceeds ingest.max_image_bytes",
    "image_undecodable": "the image bytes could not be decoded (corrupt or truncated)",
    "image_too_small": "an image side is below ingest.min_image_side",
    "caption_empty": "the caption is empty or whitespace",
    "caption_not_utf8": "the caption bytes are not valid UTF-8",
    "caption_too_long": "the caption exceeds ingest.max_caption_chars",
    "duplicate_id": "another row already used this id",
    "bad_row": "the captions file row is malformed",
    "path_escape": "the file path leaves ingest.user.images_dir (.., absolute path, symlink)",
}
# ... and the pool readers' (tasks.curation.shards: tar members, sidecars, Parquet pool tables),
# which also use image_missing, image_empty, image_too_large, image_undecodable, caption_empty,
# caption_not_utf8 and duplicate_id above.
POOL_QUARANTINE_REASONS = {
    "tar_unsafe_path": "a tar member name is absolute or has a '..' component (never extracted)",
    "tar_member_link": "a tar member is a symlink or hard link (links are never followed)",
    "tar_member_not_file": "a tar member is a device, FIFO or other non-regular file",
    "tar_member_too_large": "a tar member exceeds max_member_bytes (its bytes are not read)",
    "tar_truncated": "the tar is cut or corrupt from this byte offset: the rest was not read",
    "shard_unreadable": "the whole pool file could not be read (not a tar/Parquet, no caption)",
    "sidecar_unreadable": "the img2dataset Parquet sidecar beside a tar could not be read",
    "caption_missing": "the sample has no caption (.txt, json 'caption', sidecar) or it is null",
    "caption_not_text": "the caption is not text (a number, a list, ...)",
    "metadata_invalid": "the sample's .json member is not a UTF-8 JSON object",
    "download_failed": "the img2dataset sidecar gives a status other than 'success'",
    "sha256_mismatch": "the image bytes do not hash to the sha256 the shard declares",
    "split_invalid": "the row's split is neither 'train' nor 'eval'",
    "id_missing": "the pool table's id (or key) is null",
}
QUARANTINE_REASONS = {**INGEST_QUARANTINE_REASONS, **POOL_QUARANTINE_REASONS}


def write_table(df: pd.DataFrame, path: str | Path, schema: pa.Schema) -> None:
    """Write `df` with exactly `schema`'s columns (atomic: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def write_pairs(df: pd.DataFrame, path: str | Path) -> None:
    write_table(df, path, PAIR_SCHEMA)


def write_quarantine(df: pd.DataFrame, path: str | Path) -> None:
    write_table(df, path, QUARANTINE_SCHEMA)


def read_pairs(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a pair table; fail with a clear message if a declared column is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pair table {path} not found: run the stage that writes it first")
    table = pq.read_table(path, columns=columns)
    missing = set(columns or PAIR_COLUMNS) - set(table.column_names)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; expected {PAIR_COLUMNS}")
    return table.to_pandas()


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="object") for name in QUARANTINE_COLUMNS})
