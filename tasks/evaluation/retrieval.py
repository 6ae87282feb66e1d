"""Image-text retrieval recall@k as CLIP_benchmark computes it.

`scores = text @ image.T`. Text->image ("image retrieval"): for each caption, is its image
among the k best-scoring images. Image->text ("text retrieval"): for each image, is at least
one of its captions among the k best-scoring captions. An image may carry several captions;
the positives are a (texts x images) boolean matrix, so that case is handled exactly.

Recall@k only means something when a caption identifies one image: class-level captions
("a photo of the digit 3.") make every image of the class a correct answer. `unique_caption_rows`
keeps the rows whose caption occurs once and says how many it dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class RetrievalSet:
    """Eval rows fit for retrieval: captions unique to their image, images deduplicated."""

    captions: list[str]
    text_to_image: np.ndarray  # (T,) index into `images` of each caption's image
    images: list[bytes]  # unique encoded images
    dropped_repeated_captions: int  # rows removed because their caption occurs more than once
    num_rows_in: int


def unique_caption_rows(df: pd.DataFrame) -> RetrievalSet:
    """Keep rows whose caption occurs exactly once; dedupe images by sha256.

    Rows that share a caption are all dropped (none of them has a unique correct image).
    Rows that share an image (same sha256) with different captions are kept: the image
    appears once and all its captions count as positives.
    """
    missing = {"caption", "image", "sha256"} - set(df.columns)
    if missing:
        raise ValueError(f"retrieval rows lack columns {sorted(missing)}")
    counts = df["caption"].map(df["caption"].value_counts())
    kept = df[counts == 1]
    image_index: dict[str, int] = {}
    images: list[bytes] = []
    text_to_image = np.empty(len(kept), dtype=np.int64)
    for row, (sha, image) in enumerate(zip(kept["sha256"], kept["image"], strict=True)):
        if sha not in image_index:
            image_index[sha] = len(images)
            images.append(image)
        text_to_image[row] = image_index[sha]
    return RetrievalSet(
        captions=kept["caption"].tolist(),
        text_to_image=text_to_image,
        images=images,
        dropped_repeated_captions=int(len(df) - len(kept)),
        num_rows_in=len(df),
    )


def positives_matrix(text_to_image: np.ndarray, num_images: int) -> np.ndarray:
    """Boolean (T, I): True where caption t belongs to image i."""
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    if len(text_to_image) and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError(f"text_to_image indices must lie in [0, {num_images})")
    positives = np.zeros((len(text_to_image), num_images), dtype=bool)
    positives[np.arange(len(text_to_image)), text_to_image] = True
    return positives


def recall_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of queries (rows) with at least one positive among their k highest scores.

    k larger than the gallery counts the whole gallery (recall 1 for any query with a positive).
    """
    scores = np.asarray(scores)
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ in shape")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if scores.shape[0] == 0:
        raise ValueError("recall@k needs at least one query")
    k = min(k, scores.shape[1])
    # Stable sort: among tied scores the lower gallery index ranks first, deterministically.
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(positives, topk, axis=1).any(axis=1)
    return float(hits.mean())


def retrieval_metrics(
    text_embeddings: np.ndarray,
    image_embeddings: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int],
) -> dict[str, float]:
    """`image_retrieval_recall@k` (text->image) and `text_retrieval_recall@k` (image->text)."""
    text = np.asarray(text_embeddings, np.float32)
    image = np.asarray(image_embeddings, np.float32)
    scores = text @ image.T
    positives = positives_matrix(text_to_image, image.shape[0])
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = recall_at_k(scores, positives, k)
    for k in ks:
        out[f"text_retrieval_recall@{k}"] = recall_at_k(scores.T, positives.T, k)
    return out
