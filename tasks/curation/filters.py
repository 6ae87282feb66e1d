"""DataComp "basic" filters: caption length in words and characters, image size and shape.

Each failing row gets one stable reason code (the first rule it breaks, in the order
below) so a person can filter removed.parquet by cause. The rules are pure functions of
typed columns (`caption_length_filter`, `image_size_filter`); `basic_filter` applies both
with a `CurateParams`, and `first_reason` merges any verdicts in priority order.
Rows without an image (null width/height: a text-only pool) pass the image rules.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.params import CurateParams

# Reason codes a person can filter on. Adding one is fine; renaming breaks reports.
FILTER_REASONS = {
    "caption_too_few_words": "the caption has fewer than curate.min_caption_words words",
    "caption_too_short": "the caption has fewer than curate.min_caption_chars characters",
    "image_too_small": "the image's shorter side is below curate.min_image_side",
    "aspect_ratio_too_extreme": "long side / short side exceeds curate.max_aspect_ratio",
}


def empty_verdict(index: pd.Index) -> pd.DataFrame:
    """A verdict that keeps every row: `reason` and `detail` all None."""
    none = pd.Series([None] * len(index), index=index, dtype="object")
    return pd.DataFrame({"reason": none, "detail": none.copy()})


def _apply_rules(index: pd.Index, rules: list[tuple[str, pd.Series, pd.Series]]) -> pd.DataFrame:
    """(code, failed mask, detail strings for the failed rows) -> the first broken rule per row."""
    verdict = empty_verdict(index)
    for code, failed, details in rules:
        newly = failed.to_numpy(dtype=bool) & verdict["reason"].isna().to_numpy()
        if newly.any():
            verdict.loc[newly, "reason"] = code
            verdict.loc[newly, "detail"] = details[newly].to_numpy()
    return verdict


def caption_length_filter(captions: pd.Series, min_words: int, min_chars: int) -> pd.DataFrame:
    """DataComp's caption rule: at least `min_words` words and `min_chars` characters.

    A null caption counts as empty. Returns `reason`/`detail`, index-aligned with `captions`.
    """
    text = captions.astype("object").where(captions.notna(), "").astype(str)
    words = text.str.split().str.len().astype("int64")
    chars = text.str.strip().str.len().astype("int64")
    return _apply_rules(
        captions.index,
        [
            (
                "caption_too_few_words",
                words < min_words,
                words.astype(str) + f" words < {min_words}",
            ),
            (
                "caption_too_short",
                chars < min_chars,
                chars.astype(str) + f" chars < {min_chars}",
            ),
        ],
    )


def image_size_filter(
    width: pd.Series, height: pd.Series, min_side: int, max_aspect_ratio: float
) -> pd.DataFrame:
    """DataComp's image rule: shorter side >= `min_side`, long/short side <= `max_aspect_ratio`.

    Rows whose width or height is null have no image and pass (they are not judged here).
    Returns `reason`/`detail`, index-aligned with `width`.
    """
    if not width.index.equals(height.index):
        raise ValueError("width and height must share one index (columns of the same frame)")
    w = pd.to_numeric(width, errors="coerce").to_numpy(dtype="float64")
    h = pd.to_numeric(height, errors="coerce").to_numpy(dtype="float64")
    has_size = ~(np.isnan(w) | np.isnan(h))
    short_side = np.fmin(w, h)
    long_side = np.fmax(w, h)
    # a zero side is "too small" first, so the ratio of such rows is never read
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = long_side / np.clip(short_side, 1, None)
    size_text = pd.Series(
        [f"{int(a)}x{int(b)}" if ok else "" for a, b, ok in zip(w, h, has_size, strict=True)],
        index=width.index,
        dtype="object",
    )
    ratio_text = pd.Series(np.round(np.nan_to_num(aspect), 2), index=width.index).map(
        "{:.2f}".format
    )
    too_small = pd.Series(has_size & (short_side < min_side), index=width.index)
    too_long = pd.Series(has_size & (aspect > max_aspect_ratio), index=width.index)
    return _apply_rules(
        width.index,
        [
            ("image_too_small", too_small, size_text + f": short side < {min_side}"),
            (
                "aspect_ratio_too_extreme",
                too_long,
                size_text + ": ratio " + ratio_text + f" > {max_aspect_ratio}",
            ),
        ],
    )


def first_reason(*verdicts: pd.DataFrame) -> pd.DataFrame:
    """Merge index-aligned verdicts: each row takes the reason of the first verdict that has one."""
    if not verdicts:
        raise ValueError("first_reason needs at least one verdict")
    merged = verdicts[0][["reason", "detail"]].copy()
    for verdict in verdicts[1:]:
        if not verdict.index.equals(merged.index):
            raise ValueError("verdicts must share one index (steps over the same rows)")
        take = merged["reason"].isna() & verdict["reason"].notna()
        merged.loc[take, ["reason", "detail"]] = verdict.loc[take, ["reason", "detail"]]
    return merged


def basic_filter(pairs: pd.DataFrame, params: CurateParams) -> pd.DataFrame:
    """Apply the basic filters to `pairs`; return (index-aligned) `reason` and `detail` columns.

    `reason` is None for a row that passes every filter. Caption rules come first.
    """
    return first_reason(
        caption_length_filter(pairs["caption"], params.min_caption_words, params.min_caption_chars),
        image_size_filter(
            pairs["width"], pairs["height"], params.min_image_side, params.max_aspect_ratio
        ),
    )
