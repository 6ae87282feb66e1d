"""Zero-shot metrics against hand-computed values; the classifier uses eval prompts only."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from tasks.evaluation.zeroshot import (
    average_prompt_embeddings,
    build_classifier,
    classification_metrics,
    confusion_matrix,
    evaluate_zeroshot,
    format_prompts,
    topk_accuracy,
    zeroshot_logits,
)
from tasks.params import DigitsSource

CLASSES6 = ["a", "b", "c", "d", "e", "f"]


def test_acc1_acc5_mean_per_class_recall_on_crafted_logits() -> None:
    # 6 classes, 5 samples. Rank of the true class per row: 1, 2, 6, 1, 5.
    logits = np.array(
        [
            [9, 1, 2, 3, 4, 5],  # true 0 -> top-1
            [1, 8, 9, 2, 3, 4],  # true 1 -> rank 2 (class 2 wins)
            [6, 5, 4, 3, 2, 1],  # true 5 -> rank 6
            [0, 0, 0, 9, 0, 0],  # true 3 -> top-1
            [5, 4, 3, 2, 1, 0],  # true 4 -> rank 5
        ],
        dtype=float,
    )
    targets = np.array([0, 1, 5, 3, 4])
    res = classification_metrics(logits, targets, CLASSES6)
    assert res.acc1 == pytest.approx(2 / 5)
    assert res.acc5 == pytest.approx(4 / 5)
    # Present classes 0,1,3,4,5 with recalls 1,0,1,0,0; class 2 has no samples -> excluded.
    assert res.mean_per_class_recall == pytest.approx(2 / 5)
    assert np.isnan(res.per_class_recall[2])
    expected = np.zeros((6, 6), dtype=int)
    for t, p in [(0, 0), (1, 2), (5, 0), (3, 3), (4, 0)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(res.confusion, expected)
    assert res.metrics("zeroshot") == {
        "zeroshot_acc1": pytest.approx(0.4),
        "zeroshot_acc5": pytest.approx(0.8),
        "zeroshot_mean_per_class_recall": pytest.approx(0.4),
    }


def test_mean_per_class_recall_differs_from_accuracy_on_imbalanced_classes() -> None:
    # Class 0: 4 samples all right; class 1: 1 sample wrong. acc1 0.8, balanced 0.5.
    logits = np.array([[1, 0]] * 5, dtype=float)
    res = classification_metrics(logits, np.array([0, 0, 0, 0, 1]), ["x", "y"])
    assert res.acc1 == pytest.approx(0.8)
    assert res.mean_per_class_recall == pytest.approx(0.5)


def test_acc5_omitted_below_five_classes() -> None:
    logits = np.eye(3)
    res = classification_metrics(logits, np.array([0, 1, 2]), ["p", "q", "r"])
    assert res.acc5 is None
    assert "textiles_zeroshot_acc5" not in res.metrics("textiles_zeroshot")
    assert res.metrics("textiles_zeroshot")["textiles_zeroshot_acc1"] == 1.0


def test_topk_ties_resolve_to_lower_index_and_k_is_clipped() -> None:
    logits = np.zeros((2, 3))
    assert topk_accuracy(logits, np.array([0, 2]), 1) == pytest.approx(0.5)
    assert topk_accuracy(logits, np.array([0, 2]), 10) == 1.0


def test_confusion_and_shape_checks() -> None:
    np.testing.assert_array_equal(
        confusion_matrix(np.array([0, 1, 1]), np.array([1, 1, 0]), 2), [[0, 1], [1, 1]]
    )
    with pytest.raises(ValueError, match="does not match"):
        classification_metrics(np.zeros((2, 3)), np.array([0]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="must lie in"):
        classification_metrics(np.zeros((1, 2)), np.array([2]), ["a", "b"])


def test_average_prompt_embeddings_by_hand() -> None:
    # Class 0: prompts (2,0) and (0,1) -> normalised (1,0),(0,1) -> mean (.5,.5) -> (1,1)/sqrt2.
    # Class 1: prompts (0,-3) and (0,-1) -> (0,-1).
    emb = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0], [0.0, -1.0]])
    w = average_prompt_embeddings(emb, 2)
    np.testing.assert_allclose(w, [[2**-0.5, 2**-0.5], [0.0, -1.0]], atol=1e-7)
    with pytest.raises(ValueError, match="prompt embeddings"):
        average_prompt_embeddings(emb[:3], 2)


def test_zeroshot_logits_scale_and_perfect_classification() -> None:
    weights = np.eye(3, dtype=np.float32)
    images = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=np.float32)
    np.testing.assert_allclose(zeroshot_logits(images, weights)[3], [60, 80, 0], rtol=1e-6)
    res = evaluate_zeroshot(images, ["b", "a", "c", "b"], ["a", "b", "c"], weights)
    assert res.acc1 == 1.0 and res.mean_per_class_recall == 1.0
    with pytest.raises(ValueError, match="not among the classes"):
        evaluate_zeroshot(images[:1], ["z"], ["a", "b", "c"], weights)


def test_format_prompts_rejects_templates_without_slot() -> None:
    assert format_prompts(["one", "two"], ["a {}.", "the {}!"]) == [
        "a one.",
        "the one!",
        "a two.",
        "the two!",
    ]
    with pytest.raises(ValueError, match="slot"):
        format_prompts(["one"], ["no slot here"])


@pytest.fixture(scope="module")
def tiny_clip() -> tuple[torch.nn.Module, object]:
    """A real, randomly initialised open_clip CLIP with its BPE tokenizer (no download)."""
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    ).eval()
    return model, open_clip.get_tokenizer("ViT-B-32", context_length=16)


def _own_class_weights(model, tokenizer, classnames, templates) -> np.ndarray:
    """Per class: encode each formatted template, normalise, average, renormalise."""
    rows = []
    with torch.no_grad():
        for name in classnames:
            emb = model.encode_text(tokenizer([t.format(name) for t in templates]))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            rows.append((mean / mean.norm()).numpy())
    return np.stack(rows)


def test_classifier_weights_are_the_eval_template_average(tiny_clip) -> None:
    model, tokenizer = tiny_clip
    digits = DigitsSource()
    classnames = ["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"]
    weights = build_classifier(model, tokenizer, classnames, digits.eval_templates)
    assert weights.shape == (10, 32)
    np.testing.assert_allclose(np.linalg.norm(weights, axis=1), 1.0, atol=1e-5)
    expected = _own_class_weights(model, tokenizer, classnames, digits.eval_templates)
    np.testing.assert_allclose(weights, expected, atol=1e-5)
    # The training templates give a different classifier, so the check above can fail.
    with_train = _own_class_weights(model, tokenizer, classnames, digits.train_templates)
    assert np.abs(weights - with_train).max() > 1e-3
    with_both = _own_class_weights(
        model, tokenizer, classnames, digits.eval_templates + digits.train_templates
    )
    assert np.abs(weights - with_both).max() > 1e-3
