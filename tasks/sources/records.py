"""What a source hands back to ingest: pair rows, quarantine rows and how many rows it read."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.pair_table import QUARANTINE_REASONS
from tasks.sources.image_checks import StoredImage

SPLITS = ("train", "eval")


@dataclass
class SourceResult:
    """Rows produced by one source.

    `rows_in` is counted as rows are read (not derived from the outputs), so ingest can check
    that every row read ended up either as a pair or in quarantine.
    """

    source: str
    pairs: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    rows_in: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific report entries


def pair_row(
    pair_id: str,
    image: StoredImage,
    caption: str,
    source: str,
    label: str | None,
    split: str,
) -> dict[str, Any]:
    """One row of the pair table (PAIR_SCHEMA)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return {
        "id": pair_id,
        "sha256": image.sha256,
        "image": image.data,
        "width": image.width,
        "height": image.height,
        "caption": caption,
        "source": source,
        "label": label,
        "split": split,
    }


def quarantine_row(row: str, source: str, reason: str, detail: str) -> dict[str, str]:
    """One row of the quarantine table; `reason` must be a declared QUARANTINE_REASONS code."""
    if reason not in QUARANTINE_REASONS:
        raise ValueError(f"unknown quarantine reason {reason!r}; declare it in QUARANTINE_REASONS")
    return {"row": row, "source": source, "reason": reason, "detail": detail}


def source_rng(seed: int, source: str) -> np.random.Generator:
    """A generator seeded by the run seed and the source name, so sources never share streams."""
    return np.random.default_rng([seed, zlib.crc32(source.encode())])


def stratified_holdout(labels: list[str], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of held-out rows: `round(fraction * n_class)` rows of each class, seeded."""
    labels_arr = np.asarray(labels, dtype=object)
    mask = np.zeros(len(labels_arr), dtype=bool)
    for label in sorted(set(labels)):
        idx = np.flatnonzero(labels_arr == label)
        n_eval = round(fraction * len(idx))
        mask[rng.permutation(idx)[:n_eval]] = True
    return mask


def stratified_cap(labels: list[str], cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded subset of `cap` rows keeping class shares (largest remainder)."""
    if cap >= len(labels):
        return np.arange(len(labels))
    labels_arr = np.asarray(labels, dtype=object)
    classes = sorted(set(labels))
    counts = np.array([(labels_arr == c).sum() for c in classes])
    quota = counts * cap / len(labels)
    take = np.floor(quota).astype(int)
    # Hand the remaining slots to the classes with the largest fractional parts.
    for i in np.argsort(-(quota - take), kind="stable")[: cap - take.sum()]:
        take[i] += 1
    chosen = [
        rng.permutation(np.flatnonzero(labels_arr == c))[:n]
        for c, n in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))
