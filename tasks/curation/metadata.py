"""MetaCLIP metadata: the list of entries captions are matched against (index = entry id).

MetaCLIP builds ~500k entries from WordNet and Wikipedia; offline we use the top-N English
words of `wordfreq`, the dataset's class names and an optional user JSON list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tasks.errors import StageError
from tasks.params import CurateParams


def load_metadata_file(path: str | Path) -> list[str]:
    """Read a user metadata file: a JSON list of non-empty strings."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"curate.metadata_file {path} not found: give a JSON list of strings")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageError(f"curate.metadata_file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise StageError(f"curate.metadata_file {path} must hold a JSON list, got {type(data)}")
    bad = [(i, v) for i, v in enumerate(data) if not isinstance(v, str) or not v.strip()]
    if bad:
        i, value = bad[0]
        raise StageError(
            f"curate.metadata_file {path}: entry {i} = {value!r} is not a non-empty string "
            f"({len(bad)} bad entries in all)"
        )
    return data


def build_metadata(
    params: CurateParams, class_names: Iterable[str], root: str | Path = "."
) -> list[str]:
    """Entries in a stable order: wordfreq words, then class names, then the user's list.

    Entries are whitespace-normalised and deduplicated (first occurrence wins), because a
    repeated entry would double-count its matches. `root` resolves a relative metadata_file.
    """
    entries: list[str] = []
    if params.wordfreq_top_n:
        from wordfreq import top_n_list  # a few MB of word lists: load only when used

        entries.extend(top_n_list("en", params.wordfreq_top_n))
    if params.include_class_names:
        entries.extend(sorted({str(c) for c in class_names if c is not None and str(c).strip()}))
    if params.metadata_file:
        path = Path(params.metadata_file)
        entries.extend(load_metadata_file(path if path.is_absolute() else Path(root) / path))

    seen: set[str] = set()
    unique: list[str] = []
    for entry in entries:
        norm = " ".join(entry.split())
        if norm and norm not in seen:
            seen.add(norm)
            unique.append(norm)
    return unique


def write_metadata(entries: list[str], path: str | Path) -> None:
    """Write the entry list as JSON (the list index is the entry id)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, ensure_ascii=False, indent=0), encoding="utf-8")


def read_metadata(path: str | Path) -> list[str]:
    """Read an entry list written by `write_metadata`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
