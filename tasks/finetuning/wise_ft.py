"""WiSE-FT (Wortsman et al.): interpolate the weights before and after fine-tuning.

    theta_alpha = (1 - alpha) * theta_base + alpha * theta_finetuned

Every alpha of the sweep is scored with the evaluate stage's own metric functions (zero-shot
classifier from averaged prompt embeddings, `evaluate_zeroshot`, `retrieval_metrics`,
`pair_geometry`) on two sets, images decoded once for the whole sweep:
- `val`: a slice held out from the curated TRAIN rows before fine-tuning (never trained on),
  scored with the digits eval prompts and retrieval over its unique-caption rows;
- `eval`: the held-out eval split, reported next to the zero-shot baseline (alpha = 0) and
  never used for the choice.

Rule: the alpha with the best validation score `1/2 acc1 + 1/4 (R@5 text->image + R@5
image->text)` (digits zero-shot acc1 and retrieval R@5 weigh the same); ties go to the
smaller alpha, the one closer to the zero-shot model.

MoE recipe: the base is the upcycled model at initialisation (every expert a copy of the
dense FFN, router at its seeded init), so experts interpolate with the FFN they were
copied from and each router with its own initial weights. At alpha = 0 all experts are
equal, so the model computes exactly the dense base model's function whatever the router.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tasks.evaluation.embedding_metrics import pair_geometry
from tasks.evaluation.eval_sets import EvalSets
from tasks.evaluation.retrieval import retrieval_metrics
from tasks.evaluation.zeroshot import average_prompt_embeddings, evaluate_zeroshot, format_prompts
from tasks.images import decode_images
from tasks.models.encode import encode_image_tensor, encode_texts
from tasks.models.factory import LoadedModel

RULE = "max over alpha of val 0.5*zeroshot_acc1 + 0.25*(R@5 t2i + R@5 i2t); ties -> smaller alpha"
SCORE_KEYS = ("zeroshot_acc1", "image_retrieval_recall@5", "text_retrieval_recall@5")
REPORTED = (
    "zeroshot_acc1",
    "zeroshot_mean_per_class_recall",
    "image_retrieval_recall@5",
    "text_retrieval_recall@5",
    "alignment",
    "uniformity",
)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the state dict (the snapshot WiSE-FT interpolates from)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def interpolate(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """`(1 - alpha) * base + alpha * tuned` for float tensors; others are taken from `tuned`.

    alpha 0 returns the base values and alpha 1 the tuned values bit for bit.
    """
    if base.keys() != tuned.keys():
        only_base = sorted(base.keys() - tuned.keys())[:5]
        only_tuned = sorted(tuned.keys() - base.keys())[:5]
        raise ValueError(
            f"WiSE-FT needs the same parameters before and after: only in base {only_base}, "
            f"only in fine-tuned {only_tuned}"
        )
    out = {}
    for key, t in tuned.items():
        b = base[key]
        if b.shape != t.shape:
            raise ValueError(f"WiSE-FT: {key} has shape {tuple(b.shape)} vs {tuple(t.shape)}")
        out[key] = (1.0 - alpha) * b + alpha * t if t.is_floating_point() else t.clone()
    return out


def score(metrics: dict[str, float]) -> float:
    """The selection score of one alpha (see RULE)."""
    acc, t2i, i2t = (metrics[k] for k in SCORE_KEYS)
    return 0.5 * acc + 0.25 * (t2i + i2t)


@dataclass
class SweepSet:
    """The digits zero-shot and retrieval parts of an EvalSets, images decoded once."""

    digits: torch.Tensor  # uint8 [N, 3, S, S]
    labels: list[str]
    classnames: list[str]
    prompts: list[str]  # class-major, as format_prompts orders them
    retrieval_images: torch.Tensor
    captions: list[str]
    text_to_image: np.ndarray

    @classmethod
    def from_sets(cls, sets: EvalSets, image_size: int) -> SweepSet:
        d, r = sets.digits, sets.retrieval
        return cls(
            digits=decode_images(d.images, image_size, progress=False),
            labels=list(d.labels),
            classnames=list(d.classnames),
            prompts=format_prompts(d.classnames, d.templates),
            retrieval_images=decode_images(r.images, image_size, progress=False),
            captions=list(r.captions),
            text_to_image=r.text_to_image,
        )


def _embed_images(loaded: LoadedModel, images: torch.Tensor, batch_size: int) -> np.ndarray:
    parts = [
        encode_image_tensor(loaded, images[i : i + batch_size]).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).numpy()


def score_model(loaded: LoadedModel, data: SweepSet, batch_size: int) -> dict[str, float]:
    """Digits zero-shot acc1 / mean per-class recall, retrieval R@5, alignment, uniformity."""
    loaded.model.eval()
    weights = average_prompt_embeddings(
        encode_texts(loaded, data.prompts, batch_size), len(data.classnames)
    )
    digits = _embed_images(loaded, data.digits, batch_size)
    metrics = dict(
        evaluate_zeroshot(digits, data.labels, data.classnames, weights).metrics("zeroshot")
    )
    text = encode_texts(loaded, data.captions, batch_size)
    image = _embed_images(loaded, data.retrieval_images, batch_size)
    metrics.update(retrieval_metrics(text, image, data.text_to_image, [5]))
    metrics.update(pair_geometry(image[data.text_to_image], text))
    return {k: float(v) for k, v in metrics.items()}


def sweep(
    loaded: LoadedModel,
    base: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    alphas: Sequence[float],
    val: EvalSets,
    eval_sets: EvalSets,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Score every alpha on `val` and `eval_sets`; leaves the model at the last alpha."""
    val_data = SweepSet.from_sets(val, loaded.image_size)
    eval_data = SweepSet.from_sets(eval_sets, loaded.image_size)
    rows = []
    device = loaded.device
    for alpha in tqdm(sorted(alphas), desc="wise-ft alphas", leave=False):
        state = interpolate(base, tuned, alpha)
        loaded.model.load_state_dict({k: v.to(device) for k, v in state.items()})
        val_metrics = score_model(loaded, val_data, batch_size)
        eval_metrics = score_model(loaded, eval_data, batch_size)
        rows.append(
            {
                "alpha": float(alpha),
                "val_score": score(val_metrics),
                "val": {k: val_metrics[k] for k in REPORTED if k in val_metrics},
                "eval": {k: eval_metrics[k] for k in REPORTED if k in eval_metrics},
            }
        )
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row RULE picks (rows sorted by alpha; `max` keeps the first, i.e. smaller, tie)."""
    return max(sorted(rows, key=lambda r: r["alpha"]), key=lambda r: r["val_score"])


def summary(rows: list[dict[str, Any]], chosen: dict[str, Any], recipe: str) -> dict[str, Any]:
    """metrics/wise_ft.json: the chosen alpha, the rule, and every alpha next to alpha = 0."""
    zero = next((r for r in rows if r["alpha"] == 0.0), None)
    out: dict[str, Any] = {
        "recipe": recipe,
        "alpha": chosen["alpha"],
        "rule": RULE,
        "chosen_val_score": chosen["val_score"],
        "chosen_eval": chosen["eval"],
        "sweep": rows,
    }
    if zero is not None:
        out["zero_shot_eval"] = zero["eval"]
        out["gain_vs_zero_shot"] = {
            k: chosen["eval"][k] - zero["eval"][k] for k in chosen["eval"] if k in zero["eval"]
        }
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """One row per alpha: the val score and the eval metrics (a DVC plot, x = alpha)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k in REPORTED if any(k in r["eval"] for r in rows)]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["alpha", "val_score", *(f"eval_{k}" for k in keys)])
        for r in sorted(rows, key=lambda r: r["alpha"]):
            writer.writerow([r["alpha"], r["val_score"], *(r["eval"].get(k) for k in keys)])
    tmp.replace(path)
    return path


def plot(rows: list[dict[str, Any]], chosen_alpha: float, path: Path, title: str) -> Path:
    """Accuracy and recall against alpha, the chosen alpha marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["alpha"])
    alphas = [r["alpha"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = [
        ("eval digits zero-shot acc1", lambda r: r["eval"]["zeroshot_acc1"]),
        ("eval R@5 text->image", lambda r: r["eval"]["image_retrieval_recall@5"]),
        ("eval R@5 image->text", lambda r: r["eval"]["text_retrieval_recall@5"]),
        ("val score (chooses alpha)", lambda r: r["val_score"]),
    ]
    for label, get in lines:
        ax.plot(alphas, [get(r) for r in rows], marker="o", label=label)
    ax.axvline(chosen_alpha, color="grey", linestyle="--", label=f"chosen alpha {chosen_alpha}")
    ax.set_xlabel("alpha (0 = base model, 1 = fine-tuned)")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
