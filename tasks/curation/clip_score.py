"""DataComp's CLIP-score filter: keep the pairs whose image-text cosine is high.

Two modes, as in datacomp's `apply_filter.py`: `fraction` keeps the top share of the
scored pool (DataComp-1B used the top 30% under L/14), `threshold` keeps scores at or
above a fixed cosine (0.28 for LAION-2B under B/32). Here `fraction` keeps exactly
round(fraction x scored rows), ties broken by position (earlier rows first), so the count
never depends on how many rows share the cut score. Rows without a score (no image: NaN)
are not judged and are kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.curation.filters import empty_verdict

CLIP_SCORE_REASONS = {
    "low_clip_score": (
        "the image-text cosine under the scoring model is below the threshold, or outside "
        "the kept top fraction of the pool"
    ),
}


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Row-wise cosine of image and text embeddings (float32; NaN where an image row is NaN)."""
    a = np.asarray(image_emb, dtype=np.float32)
    b = np.asarray(text_emb, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embeddings must be [N, dim] of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((a * b).sum(axis=1) / norms).astype(np.float32)


def clip_score_filter(
    scores: np.ndarray, fraction: float | None, threshold: float | None
) -> pd.DataFrame:
    """`reason` (`low_clip_score` or None) and `detail` per score (positional RangeIndex).

    Exactly one of `fraction` (in (0, 1]: keep that top share of the scored rows) and
    `threshold` (in [-1, 1]: keep score >= threshold) must be given.
    """
    if (fraction is None) == (threshold is None):
        raise ValueError("give exactly one of fraction (top share kept) and threshold")
    scores = np.asarray(scores, dtype=np.float64)
    scored = np.flatnonzero(~np.isnan(scores))
    verdict = empty_verdict(pd.RangeIndex(len(scores)))
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        keep_count = int(round(fraction * len(scored)))
        # highest first; a stable sort on the negated score keeps earlier rows first on ties
        ranked = scored[np.argsort(-scores[scored], kind="stable")]
        removed = ranked[keep_count:]
        cut = scores[ranked[keep_count - 1]] if keep_count else float("inf")
        rule = f"outside the top {fraction:.0%} of {len(scored)} scored rows (cut {cut:.4f})"
    else:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
        removed = scored[scores[scored] < threshold]
        rule = f"< threshold {threshold:.4f}"
    if len(removed):
        removed = np.sort(removed)
        verdict.loc[removed, "reason"] = "low_clip_score"
        verdict.loc[removed, "detail"] = [f"score {s:.4f} {rule}" for s in scores[removed]]
    return verdict
