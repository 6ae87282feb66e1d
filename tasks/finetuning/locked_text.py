"""Locked-text fine-tuning (LiT-style): only the image tower (and the temperature) train.

The whole text side, the tower AND its projection, stays fixed, so caption embeddings do
not move at all: the zero-shot classifier built from prompts is the base model's, and the
image tower is pulled toward it. Works for HF and built-in open_clip text towers alike.
"""

from __future__ import annotations

from typing import Any

from tasks.models.factory import LoadedModel, trainable_parameters
from tasks.params import FinetuneParams
from tasks.training.objective import ClipObjective

# Parameters outside the towers that still train: the temperature (and SigLIP's bias).
_SHARED = ("logit_scale", "logit_bias")


def lock_text_side(loaded: LoadedModel, params: FinetuneParams) -> dict[str, Any]:
    """Freeze every parameter that is not in `visual.*` or the temperature."""
    for name, p in loaded.model.named_parameters():
        p.requires_grad_(name.startswith("visual.") or name in _SHARED)
    return {"trainable_params": trainable_parameters(loaded.model)}


def objective(params: FinetuneParams) -> ClipObjective:
    return ClipObjective()
