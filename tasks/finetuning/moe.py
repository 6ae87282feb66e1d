"""CLIP-MoE upcycling (OpenSparseLLMs/CLIP-MoE) as a fine-tuning recipe.

`prepare` upcycles every ViT FFN into `moe_experts` copies behind a top-`moe_top_k` router
(tasks.models.moe) and sets what trains (`moe_train`): the routers only, the MoE layers
(routers + experts; CLIP-MoE's default), or everything the locks allow. Loss: CLIP +
`moe_balance_weight` * Switch load balance, the latter an `aux_` feature of the forward pass.
Routers alone get no gradient from the CLIP loss while the experts are identical copies
(any renormalised top-k mix of equal experts is the same function): only with experts that
already differ (e.g. a second stage) is `router` useful.
"""

from __future__ import annotations

from typing import Any

import torch

from tasks.models import moe as moe_layers
from tasks.models.factory import LoadedModel, trainable_parameters
from tasks.params import FinetuneParams
from tasks.training.data import Batch
from tasks.training.objective import ClipObjective, Features


def upcycle(loaded: LoadedModel, params: FinetuneParams) -> dict[str, Any]:
    """Upcycle the image tower (seeded router init) and set which parameters train."""
    generator = torch.Generator().manual_seed(params.seed)
    layout = moe_layers.upcycle_vision(
        loaded.model, params.moe_experts, params.moe_top_k, generator=generator
    )
    if params.moe_train != "all":
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        for layer in moe_layers.moe_layers(loaded.model):
            trained = layer.router if params.moe_train == "router" else layer
            for p in trained.parameters():
                p.requires_grad_(True)
    return {"moe": layout, "trainable_params": trainable_parameters(loaded.model)}


class MoEObjective(ClipObjective):
    """CLIP loss; the forward pass adds `aux_moe_balance` = weight * mean balance term."""

    def __init__(self, balance_weight: float) -> None:
        super().__init__()
        self.balance_weight = balance_weight

    def features(self, model: torch.nn.Module, batch: Batch) -> Features:
        feats = super().features(model, batch)
        feats["aux_moe_balance"] = self.balance_weight * moe_layers.balance_loss(model)
        return feats


def objective(params: FinetuneParams) -> MoEObjective:
    return MoEObjective(params.moe_balance_weight)
