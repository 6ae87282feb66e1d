"""Zero-shot classification as CLIP_benchmark does it.

Class weights: each template formatted with the class name, the prompt embeddings
L2-normalised, averaged per class and renormalised. Logits are `100 * img @ W.T`.
Reported: `acc1`, `acc5` (only with at least 5 classes), `mean_per_class_recall`
(balanced accuracy), the per-class recall and the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import open_clip
import torch

# CLIP's learned temperature saturates at 100; CLIP_benchmark scales zero-shot logits by it too.
LOGIT_SCALE = 100.0


def format_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompts in class-major order: all templates of class 0, then class 1, ..."""
    if not classnames:
        raise ValueError("zero-shot needs at least one class name")
    if not templates:
        raise ValueError("zero-shot needs at least one prompt template")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}' slot for the class name")
    return [template.format(name) for name in classnames for template in templates]


def average_prompt_embeddings(prompt_embeddings: np.ndarray, num_classes: int) -> np.ndarray:
    """Class weights (C, D) from class-major prompt embeddings (C*T, D).

    Each prompt embedding is L2-normalised first (so every template weighs the same), the
    templates of a class are averaged, and the mean is renormalised onto the unit sphere.
    """
    emb = np.asarray(prompt_embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] % num_classes:
        raise ValueError(
            f"expected ({num_classes} * templates, dim) prompt embeddings, got shape {emb.shape}"
        )
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    mean = emb.reshape(num_classes, emb.shape[0] // num_classes, -1).mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def build_classifier(
    model: torch.nn.Module,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Zero-shot class weights (C, D) of an open_clip model, via open_clip's own builder.

    `templates` are exactly the prompts used; nothing else (e.g. training templates) is mixed in.
    """
    format_prompts(classnames, templates)  # validates the inputs with clear messages
    model.eval()
    weights = open_clip.build_zero_shot_classifier(
        model,
        tokenizer,
        classnames=list(classnames),
        templates=list(templates),
        num_classes_per_batch=10,
        device=device,
        use_tqdm=False,
    )
    # open_clip returns (D, C); rows per class are easier to read and test.
    return weights.T.float().cpu().numpy()


def zeroshot_logits(image_embeddings: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """Logits (N, C) = 100 * img @ W.T for L2-normalised image embeddings (N, D)."""
    return (
        LOGIT_SCALE
        * np.asarray(image_embeddings, np.float32)
        @ np.asarray(class_weights, np.float32).T
    )


@dataclass
class ZeroShotResult:
    """Zero-shot metrics of one model on one labelled set."""

    classnames: list[str]
    acc1: float
    acc5: float | None  # None with fewer than 5 classes (top-5 of 3 classes is always right)
    mean_per_class_recall: float
    per_class_recall: list[float]
    confusion: np.ndarray = field(repr=False)  # (C, C): rows true class, columns predicted
    num_samples: int = 0

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat metric dict with stable keys, e.g. `zeroshot_acc1`; acc5 omitted when undefined."""
        out = {
            f"{prefix}_acc1": self.acc1,
            f"{prefix}_mean_per_class_recall": self.mean_per_class_recall,
        }
        if self.acc5 is not None:
            out[f"{prefix}_acc5"] = self.acc5
        return out


def topk_accuracy(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the k highest logits."""
    logits = np.asarray(logits)
    k = min(k, logits.shape[1])
    # Stable argsort of the negated logits: ties go to the lower class index, deterministically.
    topk = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((topk == np.asarray(targets)[:, None]).any(axis=1).mean())


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (C, C): entry [t, p] is the number of class-t samples predicted as p."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets), np.asarray(preds)), 1)
    return matrix


def classification_metrics(
    logits: np.ndarray, targets: np.ndarray, classnames: Sequence[str]
) -> ZeroShotResult:
    """acc1, acc5 (>= 5 classes), mean per-class recall and confusion from logits (N, C)."""
    logits = np.asarray(logits)
    targets = np.asarray(targets, dtype=np.int64)
    num_classes = len(classnames)
    if logits.ndim != 2 or logits.shape != (len(targets), num_classes):
        raise ValueError(
            f"logits shape {logits.shape} does not match {len(targets)} targets x "
            f"{num_classes} classes"
        )
    if len(targets) == 0:
        raise ValueError("zero-shot evaluation got no samples")
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(
            f"targets must lie in [0, {num_classes}); got {targets.min()}..{targets.max()}"
        )
    preds = np.argsort(-logits, axis=1, kind="stable")[:, 0]
    confusion = confusion_matrix(targets, preds, num_classes)
    support = confusion.sum(axis=1)
    present = support > 0
    # Recall per class over the classes that occur; balanced accuracy is their mean
    # (sklearn's balanced_accuracy_score, which CLIP_benchmark reports, does the same).
    recall = np.full(num_classes, np.nan)
    recall[present] = np.diag(confusion)[present] / support[present]
    return ZeroShotResult(
        classnames=list(classnames),
        acc1=topk_accuracy(logits, targets, 1),
        acc5=topk_accuracy(logits, targets, 5) if num_classes >= 5 else None,
        mean_per_class_recall=float(np.nanmean(recall)),
        per_class_recall=[float(r) for r in recall],
        confusion=confusion,
        num_samples=len(targets),
    )


def evaluate_zeroshot(
    image_embeddings: np.ndarray,
    labels: Sequence[str],
    classnames: Sequence[str],
    class_weights: np.ndarray,
) -> ZeroShotResult:
    """Score L2-normalised image embeddings against class weights; labels are class names."""
    index = {name: i for i, name in enumerate(classnames)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classnames)}")
    targets = np.array([index[label] for label in labels], dtype=np.int64)
    return classification_metrics(
        zeroshot_logits(image_embeddings, class_weights), targets, classnames
    )
