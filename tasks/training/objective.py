"""What a training method gives the trainer: per-sample features, then a loss over them.

The split exists so one trainer can do gradient accumulation and multi-process data
parallelism for batch-level (contrastive) losses: the trainer may run `features` on several
micro-batches or ranks, concatenate the results along dim 0, and only then call `loss` on
the full (global) batch, exactly as a single large batch would.

Contract for `features(model, batch) -> Features`:
- every tensor has the batch dimension first (B rows), so concatenation is meaningful;
  inputs the loss needs that do not come from the model (e.g. stored teacher embeddings)
  are passed through unchanged;
- a key starting with `aux_` holds a scalar auxiliary loss of this forward pass (e.g. an
  MoE load-balancing term, already weighted); the trainer adds it to the loss, it is not
  concatenated, and `loss` never sees it.

`loss(model, features) -> Tensor | (Tensor, {name: float})` returns the scalar loss (mean
over the batch it was given) and optional logs.
"""

from __future__ import annotations

from typing import Protocol

import torch
from open_clip import ClipLoss

from tasks.training.data import Batch, encode_batch_text

Features = dict[str, torch.Tensor]
LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, float]]
AUX_PREFIX = "aux_"


class Objective(Protocol):
    """A training method as the trainer sees it (see the module docstring)."""

    def features(self, model: torch.nn.Module, batch: Batch) -> Features: ...

    def loss(self, model: torch.nn.Module, features: Features) -> LossOutput: ...


def split_aux(features: Features) -> tuple[Features, Features]:
    """(per-sample features, auxiliary scalar losses) of one forward pass."""
    per_sample = {k: v for k, v in features.items() if not k.startswith(AUX_PREFIX)}
    aux = {k: v for k, v in features.items() if k.startswith(AUX_PREFIX)}
    return per_sample, aux


def split_loss(out: LossOutput) -> tuple[torch.Tensor, dict[str, float]]:
    """A loss output as (loss, logs)."""
    if isinstance(out, tuple):
        return out[0], dict(out[1])
    return out, {}


def objective_loss(objective: Objective, model: torch.nn.Module, batch: Batch) -> LossOutput:
    """Features then loss on one batch, aux terms included (evaluation and tests use this)."""
    per_sample, aux = split_aux(objective.features(model, batch))
    loss, logs = split_loss(objective.loss(model, per_sample))
    for name, value in aux.items():
        loss = loss + value
        logs[name] = float(value.detach())
    return loss, logs


class ClipObjective:
    """Symmetric InfoNCE over the batch (open_clip's ClipLoss) at the model's temperature."""

    def __init__(self) -> None:
        self._loss = ClipLoss()

    def features(self, model: torch.nn.Module, batch: Batch) -> Features:
        return {
            "image": model.encode_image(batch["image"], normalize=True),
            "text": encode_batch_text(model, batch),
        }

    def loss(self, model: torch.nn.Module, features: Features) -> LossOutput:
        return self._loss(features["image"], features["text"], model.logit_scale.exp())
