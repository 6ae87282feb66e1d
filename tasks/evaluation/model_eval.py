"""Score one loaded model on the eval sets: every metric the evaluate stage reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tasks.evaluation.embedding_metrics import pair_geometry
from tasks.evaluation.eval_sets import EvalSets, LabelledSet
from tasks.evaluation.retrieval import retrieval_metrics
from tasks.evaluation.zeroshot import ZeroShotResult, build_classifier, evaluate_zeroshot
from tasks.models.encode import encode_images, encode_texts
from tasks.models.factory import LoadedModel, vision_parameters


@dataclass
class ModelEvaluation:
    """Flat metrics (the JSON the gate and registry read) plus the detail behind the plots."""

    metrics: dict[str, float]
    zeroshot: dict[str, ZeroShotResult] = field(default_factory=dict)  # task -> result


def zeroshot_on(loaded: LoadedModel, data: LabelledSet, batch_size: int) -> ZeroShotResult:
    """Zero-shot result of `loaded` on a labelled set, prompts = `data.templates` only."""
    weights = build_classifier(
        loaded.model, loaded.tokenizer, data.classnames, data.templates, device=loaded.device
    )
    image_emb = encode_images(loaded, data.images, batch_size=batch_size)
    return evaluate_zeroshot(image_emb, data.labels, data.classnames, weights)


def evaluate_model(
    loaded: LoadedModel, sets: EvalSets, recall_at: Sequence[int], batch_size: int
) -> ModelEvaluation:
    """zero-shot (digits, textiles), retrieval recall@k, alignment/uniformity, vision params."""
    loaded.model.eval()
    metrics: dict[str, float] = {}
    results: dict[str, ZeroShotResult] = {}

    digits = zeroshot_on(loaded, sets.digits, batch_size)
    results["digits"] = digits
    metrics.update(digits.metrics("zeroshot"))
    if sets.textiles is not None:
        textiles = zeroshot_on(loaded, sets.textiles, batch_size)
        results["textiles"] = textiles
        metrics.update(textiles.metrics("textiles_zeroshot"))

    retrieval = sets.retrieval
    text_emb = encode_texts(loaded, retrieval.captions, batch_size=batch_size)
    image_emb = encode_images(loaded, retrieval.images, batch_size=batch_size)
    metrics.update(retrieval_metrics(text_emb, image_emb, retrieval.text_to_image, recall_at))
    # Geometry over matched (image, caption) pairs: one row per caption with its image.
    metrics.update(pair_geometry(image_emb[retrieval.text_to_image], text_emb))

    # Image-tower size: what distillation shrinks; the registry shows it next to accuracy.
    metrics["vision_params"] = vision_parameters(loaded.model)
    metrics = {k: (float(v) if k != "vision_params" else int(v)) for k, v in metrics.items()}
    return ModelEvaluation(metrics=metrics, zeroshot=results)


def chance_levels(sets: EvalSets, recall_at: Sequence[int]) -> dict[str, float]:
    """What a random model scores: a yardstick printed next to the measured numbers."""
    n_img = len(sets.retrieval.images)
    out = {"zeroshot_acc1": 1.0 / len(sets.digits.classnames)}
    for k in recall_at:
        out[f"image_retrieval_recall@{k}"] = float(min(k, n_img) / n_img)
    return {k: float(np.round(v, 6)) for k, v in out.items()}
