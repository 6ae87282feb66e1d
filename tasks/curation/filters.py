"""DataComp "basic" filters: caption length in words and characters, image size and shape.

Each failing row gets one stable reason code (the first rule it breaks, in the order
below) so a person can filter removed.parquet by cause.
"""

from __future__ import annotations

import pandas as pd

from tasks.params import CurateParams

# Reason codes a person can filter on. Adding one is fine; renaming breaks reports.
FILTER_REASONS = {
    "caption_too_few_words": "the caption has fewer than curate.min_caption_words words",
    "caption_too_short": "the caption has fewer than curate.min_caption_chars characters",
    "image_too_small": "the image's shorter side is below curate.min_image_side",
    "aspect_ratio_too_extreme": "long side / short side exceeds curate.max_aspect_ratio",
}


def basic_filter(pairs: pd.DataFrame, params: CurateParams) -> pd.DataFrame:
    """Apply the basic filters to `pairs`; return (index-aligned) `reason` and `detail` columns.

    `reason` is None for a row that passes every filter.
    """
    captions = pairs["caption"].fillna("").astype(str)
    words = captions.str.split().str.len()
    chars = captions.str.strip().str.len()
    width = pairs["width"].astype("int64")
    height = pairs["height"].astype("int64")
    short_side = pd.concat([width, height], axis=1).min(axis=1)
    long_side = pd.concat([width, height], axis=1).max(axis=1)
    # a zero side is "too small" below, so the ratio of such rows is never read
    aspect = long_side / short_side.clip(lower=1)

    rules = [
        (
            "caption_too_few_words",
            words < params.min_caption_words,
            lambda i: f"{words[i]} words < {params.min_caption_words}",
        ),
        (
            "caption_too_short",
            chars < params.min_caption_chars,
            lambda i: f"{chars[i]} chars < {params.min_caption_chars}",
        ),
        (
            "image_too_small",
            short_side < params.min_image_side,
            lambda i: f"{width[i]}x{height[i]}: short side < {params.min_image_side}",
        ),
        (
            "aspect_ratio_too_extreme",
            aspect > params.max_aspect_ratio,
            lambda i: f"{width[i]}x{height[i]}: ratio {aspect[i]:.2f} > {params.max_aspect_ratio}",
        ),
    ]
    reason = pd.Series([None] * len(pairs), index=pairs.index, dtype="object")
    detail = pd.Series([None] * len(pairs), index=pairs.index, dtype="object")
    for code, failed, describe in rules:
        # only the first broken rule names the row
        newly = failed & reason.isna()
        for i in pairs.index[newly]:
            reason[i] = code
            detail[i] = describe(i)
    return pd.DataFrame({"reason": reason, "detail": detail})
