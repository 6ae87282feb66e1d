"""Read a user captions file (CSV or JSONL) row by row, so one bad row never sinks the file.

The file is read as bytes and decoded with `surrogateescape`: bytes that are not UTF-8 survive
as lone surrogates in the field they belong to, and the row that holds them is flagged instead
of the whole file failing to decode. Structural problems of the file itself (missing, unknown
format, no `file`/`caption` column) are config errors and raise StageError.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import StageError

REQUIRED_COLUMNS = ("file", "caption")
OPTIONAL_COLUMNS = ("label", "id", "split")
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class CaptionRecord:
    """One data row: its line number and fields, or why it is malformed.

    Field values may hold lone surrogates where the file had non-UTF-8 bytes; `is_utf8` tells.
    """

    line: int
    fields: dict[str, str | None]
    error: str | None = None


def is_utf8(text: str) -> bool:
    """False if `text` carries bytes that were not valid UTF-8 (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` with undecodable bytes shown as escapes: safe to store in a report or Parquet."""
    if is_utf8(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the file's original bytes
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape, not from bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _decode(data: bytes) -> str:
    text = data.decode("utf-8", "surrogateescape")
    return text.removeprefix("\ufeff")  # Excel writes a BOM before the header


def read_captions_file(path: Path) -> list[CaptionRecord]:
    """All data rows of a CSV or JSONL captions file, in file order (blank lines skipped)."""
    if not path.is_file():
        raise StageError(
            f"captions file {path} not found: set ingest.user.captions_file to an existing "
            "CSV or JSONL file (relative paths are under the project root)"
        )
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        records = _read_csv(path)
    elif suffix in JSONL_SUFFIXES:
        records = _read_jsonl(path)
    else:
        raise StageError(f"captions file {path} has suffix {suffix!r}: use .csv, .jsonl or .ndjson")
    if not records:
        raise StageError(f"captions file {path} has no data rows")
    return records


def _read_csv(path: Path) -> list[CaptionRecord]:
    reader = csv.reader(io.StringIO(_decode(path.read_bytes()), newline=""))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise StageError(f"captions file {path} is empty: it needs a header row") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise StageError(
            f"captions file {path} has columns {[printable(h) for h in header]} but lacks "
            f"{missing}: the header must name at least {list(REQUIRED_COLUMNS)}"
        )
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise StageError(f"captions file {path} repeats columns {dupes} in its header")
    records: list[CaptionRecord] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # the reader resumes on the next line after an error
            records.append(CaptionRecord(reader.line_num, {}, f"CSV error: {exc}"))
            continue
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line: not a row
        if len(row) != len(header):
            records.append(
                CaptionRecord(
                    reader.line_num, {}, f"{len(row)} fields where the header has {len(header)}"
                )
            )
            continue
        records.append(CaptionRecord(reader.line_num, dict(zip(header, row, strict=True))))
    return records


def _jsonl_fields(obj: Any) -> tuple[dict[str, str | None], str | None]:
    """Validated fields of one JSON object, or the reason it is malformed."""
    if not isinstance(obj, dict):
        return {}, f"a line must be a JSON object, got {type(obj).__name__}"
    fields: dict[str, str | None] = {}
    for key in REQUIRED_COLUMNS:
        if key not in obj:
            return {}, f"missing key {key!r}"
        if not isinstance(obj[key], str):
            return {}, f"{key!r} must be a string, got {type(obj[key]).__name__}"
        fields[key] = obj[key]
    for key in OPTIONAL_COLUMNS:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, str | int | type(None)):
            return {}, f"{key!r} must be a string or null, got {type(value).__name__}"
        fields[key] = None if value is None else str(value)
    return fields, None


def _read_jsonl(path: Path) -> list[CaptionRecord]:
    records: list[CaptionRecord] = []
    has_columns = False
    for line_no, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        text = _decode(raw) if line_no == 1 else raw.decode("utf-8", "surrogateescape")
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            records.append(CaptionRecord(line_no, {}, f"invalid JSON: {exc}"))
            continue
        if isinstance(obj, dict) and all(k in obj for k in REQUIRED_COLUMNS):
            has_columns = True
        fields, error = _jsonl_fields(obj)
        records.append(CaptionRecord(line_no, fields, error))
    if records and not has_columns:
        raise StageError(
            f"captions file {path}: no line has both keys {list(REQUIRED_COLUMNS)}; "
            'each line must be an object like {"file": "a.png", "caption": "..."}'
        )
    return records
