"""Geometry of the embedding sphere: Wang & Isola alignment and uniformity.

alignment  = mean over positive pairs of ||x - y||^alpha   (alpha = 2; lower is better)
uniformity = log mean over distinct pairs of exp(-t ||x_i - x_j||^2)   (t = 2; lower is better)

For a CLIP model the pairs are (image, caption) and uniformity is taken over the union of
image and text embeddings (as in the geodesic multi-modal mixup paper): a modality gap,
both modalities huddling in separate caps, shows up as poor joint uniformity.
"""

from __future__ import annotations

import numpy as np


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
    """Mean ||x_i - y_i||^alpha over the rows of two equally shaped arrays."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 2 or len(x) == 0:
        raise ValueError(
            f"alignment needs two equal non-empty (N, D) arrays, got {x.shape}, {y.shape}"
        )
    return float((np.linalg.norm(x - y, axis=1) ** alpha).mean())


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
    """log mean_{i<j} exp(-t ||x_i - x_j||^2) over the distinct pairs of rows of x."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"uniformity needs at least two (N, D) rows, got shape {x.shape}")
    sq = (x * x).sum(axis=1)
    # ||a-b||^2 = |a|^2 + |b|^2 - 2ab; clip tiny negatives from rounding.
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    iu = np.triu_indices(len(x), k=1)
    values = -t * dist2[iu]
    # log-mean-exp, shifted by the max so that large t does not underflow to log(0).
    peak = values.max()
    return float(peak + np.log(np.exp(values - peak).mean()))


def pair_geometry(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> dict[str, float]:
    """alignment of matched (image, caption) rows, joint and per-modality uniformity."""
    return {
        "alignment": alignment(image_embeddings, text_embeddings),
        "uniformity": uniformity(np.concatenate([image_embeddings, text_embeddings])),
        "uniformity_image": uniformity(image_embeddings),
        "uniformity_text": uniformity(text_embeddings),
    }
