"""User data: a folder of images plus a CSV/JSONL captions file (file, caption[, label, id, split]).

Every bad row is quarantined with a reason code and the run goes on. Checks run in this order,
and the first failure decides the reason: malformed row (bad_row), id already used by an
earlier row (duplicate_id: the first row to claim an id keeps it, even if it is later
quarantined for another reason), caption (not UTF-8, empty, too long), file path (escapes
images_dir: path_escape), file (missing, empty, too large), image (undecodable, too small).
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from tasks.errors import StageError
from tasks.sources.captions_file import CaptionRecord, is_utf8, printable, read_captions_file
from tasks.sources.image_checks import ImageRejected, read_image_file, store_encoded
from tasks.sources.records import SPLITS, SourceResult, pair_row, quarantine_row

SOURCE = "user"


class RowRejected(Exception):
    """A captions-file row failed a check; `reason` is a QUARANTINE_REASONS code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def resolve_inside(images_dir: Path, name: str) -> Path:
    """`images_dir / name`, resolved through symlinks; RowRejected if it lands outside."""
    if "\x00" in name:
        raise RowRejected("bad_row", "file name contains a NUL byte")
    relative = Path(name)
    if relative.is_absolute():
        raise RowRejected("path_escape", f"{name!r} is absolute; give a path inside images_dir")
    try:
        resolved = (images_dir / relative).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise RowRejected("image_missing", f"{name!r} cannot be resolved: {exc}") from None
    if not resolved.is_relative_to(images_dir):
        raise RowRejected(
            "path_escape", f"{name!r} resolves to {resolved}, outside images_dir {images_dir}"
        )
    return resolved


def _caption(record: CaptionRecord, max_chars: int) -> str:
    raw = record.fields.get("caption") or ""
    if not is_utf8(raw):
        raise RowRejected("caption_not_utf8", f"caption bytes are not UTF-8: '{printable(raw)}'")
    caption = raw.strip()
    if not caption:
        raise RowRejected("caption_empty", "caption is empty or whitespace")
    if len(caption) > max_chars:
        raise RowRejected(
            "caption_too_long",
            f"caption has {len(caption)} characters > ingest.max_caption_chars={max_chars}",
        )
    return caption


def _optional(record: CaptionRecord, key: str) -> str | None:
    value = record.fields.get(key)
    if value is None:
        return None
    if not is_utf8(value):
        raise RowRejected("bad_row", f"{key} is not valid UTF-8: '{printable(value)}'")
    return value.strip() or None


def _row_split(record: CaptionRecord) -> str:
    split = (_optional(record, "split") or "train").lower()
    if split not in SPLITS:
        raise RowRejected("bad_row", f"split {split!r} is not one of {list(SPLITS)}")
    return split


def load_user_pairs(
    images_dir: Path,
    captions_file: Path,
    *,
    max_caption_chars: int,
    min_side: int,
    max_side: int,
    max_bytes: int,
) -> SourceResult:
    """Pairs from a user folder; each bad row becomes a quarantine row with its reason."""
    if not images_dir.is_dir():
        raise StageError(
            f"images folder {images_dir} not found: set ingest.user.images_dir to an existing "
            "folder (relative paths are under the project root)"
        )
    images_dir = images_dir.resolve()
    records = read_captions_file(captions_file)
    result = SourceResult(SOURCE)
    claimed_ids: set[str] = set()
    for record in tqdm(records, desc="ingest user", unit="row"):
        result.rows_in += 1
        name = record.fields.get("file") or ""
        where = f"{captions_file.name}:{record.line}"
        if name:
            where += f" '{printable(name)}'"
        try:
            if record.error is not None:
                raise RowRejected("bad_row", record.error)
            if not is_utf8(name) or not name.strip():
                raise RowRejected("bad_row", f"file '{printable(name)}' is empty or not UTF-8")
            split = _row_split(record)
            label = _optional(record, "label")
            pair_id = _optional(record, "id") or f"user-{record.line:06d}"
            if pair_id in claimed_ids:
                raise RowRejected("duplicate_id", f"id {pair_id!r} was used by an earlier row")
            claimed_ids.add(pair_id)
            caption = _caption(record, max_caption_chars)
            path = resolve_inside(images_dir, name.strip())
            data = read_image_file(path, max_bytes)
            stored = store_encoded(data, min_side=min_side, max_side=max_side)
        except (RowRejected, ImageRejected) as exc:
            result.quarantine.append(quarantine_row(where, SOURCE, exc.reason, exc.detail))
            continue
        result.pairs.append(pair_row(pair_id, stored, caption, SOURCE, label, split))
    return result
