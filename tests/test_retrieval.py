"""Retrieval recall@k and alignment/uniformity against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.evaluation.embedding_metrics import alignment, pair_geometry, uniformity
from tasks.evaluation.retrieval import (
    positives_matrix,
    recall_at_k,
    retrieval_metrics,
    unique_caption_rows,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_perfect_ranking_gives_recall_one() -> None:
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(20, 8)))
    metrics = retrieval_metrics(emb, emb, np.arange(20), [1, 5])
    assert metrics == {
        "image_retrieval_recall@1": 1.0,
        "image_retrieval_recall@5": 1.0,
        "text_retrieval_recall@1": 1.0,
        "text_retrieval_recall@5": 1.0,
    }


def test_known_permutation_gives_known_recall() -> None:
    # 4 texts, 4 images; text i's true image is i. Scores rank images for text i in a fixed
    # order: text 0 -> [0,..] (rank 1), text 1 -> true at rank 2, text 2 -> rank 3, text 3 -> 4.
    scores = np.array(
        [
            [4, 3, 2, 1],
            [4, 3, 2, 1],
            [4, 3, 2, 1],
            [4, 3, 2, 1],
        ],
        dtype=float,
    )
    positives = positives_matrix(np.arange(4), 4)
    assert recall_at_k(scores, positives, 1) == pytest.approx(0.25)
    assert recall_at_k(scores, positives, 2) == pytest.approx(0.5)
    assert recall_at_k(scores, positives, 3) == pytest.approx(0.75)
    assert recall_at_k(scores, positives, 4) == 1.0
    assert recall_at_k(scores, positives, 100) == 1.0  # k beyond the gallery


def test_shifted_embeddings_recall_in_both_directions() -> None:
    # Text i sits exactly on image (i+1) mod n: every top-1 is wrong, the true one ranks lower.
    rng = np.random.default_rng(1)
    images = _unit(rng.normal(size=(6, 16)))
    texts = np.roll(images, -1, axis=0)  # text i == image i+1
    m = retrieval_metrics(texts, images, np.arange(6), [1, 6])
    assert m["image_retrieval_recall@1"] == 0.0
    assert m["text_retrieval_recall@1"] == 0.0
    assert m["image_retrieval_recall@6"] == 1.0


def test_image_with_two_captions_counts_either_caption() -> None:
    # Image 0 has captions 0 and 1, image 1 has caption 2. For image 0, caption 1 ranks first.
    text_to_image = np.array([0, 0, 1])
    scores = np.array([[0.1, 0.0], [0.9, 0.0], [0.0, 0.5]])  # (texts, images)
    positives = positives_matrix(text_to_image, 2)
    assert recall_at_k(scores.T, positives.T, 1) == 1.0  # image -> text
    assert recall_at_k(scores, positives, 1) == 1.0  # text -> image
    with pytest.raises(ValueError, match="lie in"):
        positives_matrix(np.array([2]), 2)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(scores, positives, 0)


def test_unique_caption_rows_drops_repeats_and_dedupes_images() -> None:
    df = pd.DataFrame(
        {
            "caption": ["a red circle", "a blue square", "a blue square", "a green star", "a dot"],
            "sha256": ["h1", "h2", "h3", "h4", "h1"],
            "image": [b"1", b"2", b"3", b"4", b"1"],
        }
    )
    out = unique_caption_rows(df)
    assert out.dropped_repeated_captions == 2
    assert out.num_rows_in == 5
    assert out.captions == ["a red circle", "a green star", "a dot"]
    assert out.images == [b"1", b"4"]  # h1 shared by two unique captions -> one image
    np.testing.assert_array_equal(out.text_to_image, [0, 1, 0])
    with pytest.raises(ValueError, match="lack columns"):
        unique_caption_rows(df.drop(columns=["sha256"]))


def test_alignment_by_hand() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert alignment(x, y) == pytest.approx(1.0)  # (0 + 2) / 2
    assert alignment(x, x) == 0.0
    with pytest.raises(ValueError, match="equal"):
        alignment(x, y[:1])


def test_uniformity_by_hand_and_against_torch_pdist() -> None:
    antipodal = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(antipodal) == pytest.approx(-8.0)  # log exp(-2 * 4)
    angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    triangle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert uniformity(triangle) == pytest.approx(-6.0)  # every squared distance is 3
    rng = np.random.default_rng(2)
    x = _unit(rng.normal(size=(30, 5)))
    reference = torch.pdist(torch.from_numpy(x), p=2).pow(2).mul(-2).exp().mean().log().item()
    assert uniformity(x) == pytest.approx(reference, rel=1e-9)
    # Collapsed embeddings are the least uniform possible: log 1 = 0.
    assert uniformity(np.ones((4, 3)) / np.sqrt(3)) == pytest.approx(0.0, abs=1e-12)


def test_pair_geometry_keys() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    geo = pair_geometry(x, x)
    assert geo["alignment"] == 0.0
    assert geo["uniformity_image"] == pytest.approx(-4.0)  # squared distance 2
    # Union of 4 points, 2 at each location: pairs (6): 2 at distance 0, 4 at distance^2 2.
    assert geo["uniformity"] == pytest.approx(np.log((2 + 4 * np.exp(-4)) / 6))
