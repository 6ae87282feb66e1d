"""CLIP-MoE upcycling: a ViT block's dense FFN copied into E experts behind a top-k router.

`upcycle_vision(model, num_experts=4, top_k=2)` replaces `block.mlp` (open_clip's
Sequential c_fc -> gelu -> c_proj) of every image-tower block with `MoEFeedForward`: E
copies of that FFN and a router `Linear(d, E, bias=False)`; per token softmax over the
router logits, the top-k experts, their probabilities renormalised to sum to 1, the output
the weighted sum of those experts. At upcycling all experts equal the dense FFN, so the
model computes exactly the dense model's function whatever the router says.

Each forward stores the Switch-Transformer load-balancing term `E * sum_e f_e * P_e`
(f_e: share of the token->expert assignments that went to e, P_e: mean router
probability of e) on the module; `balance_loss(model)` averages it over the MoE layers.

On disk: the layout `{"num_experts", "top_k", "blocks"}` is recorded in the model folder's
config (key `moe`) and card, and `tasks.models.io.load_model` calls `restore_layout`
before loading the weights. Plain `open_clip.create_model_and_transforms(name,
pretrained=...)` cannot load such a model: open_clip builds dense blocks and the strict
load fails on the `mlp.experts.*` / `mlp.router.*` keys. Load it with `load_model`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

MOE_KEY = "moe"


class MoEFeedForward(nn.Module):
    """Top-k mixture of FFN experts (batch-first tokens `[..., d]` in, same shape out)."""

    def __init__(self, experts: list[nn.Module], d_model: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k must lie in [1, {len(experts)}], got {top_k}")
        self.experts = nn.ModuleList(experts)
        self.router = nn.Linear(d_model, len(experts), bias=False)
        self.top_k = top_k
        self.last_balance_loss: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def c_fc(self) -> nn.Module:
        """open_clip asks `block.mlp.c_fc` for the weight dtype; every expert has the same."""
        return self.experts[0].c_fc

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router probabilities `[T, E]`, top-k expert ids `[T, k]`, renormalised weights)."""
        probs = torch.softmax(self.router(tokens).float(), dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        return probs, top_i, top_p / top_p.sum(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probs, top_i, weights = self.route(tokens)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = expert(tokens[rows]) * weights[rows, slot].unsqueeze(-1)
            out = out.index_add(0, rows, y.to(out.dtype))
        self.last_balance_loss = switch_balance(probs, top_i, self.num_experts)
        return out.reshape(shape)


def switch_balance(probs: torch.Tensor, top_i: torch.Tensor, num_experts: int) -> torch.Tensor:
    """`E * sum_e f_e * P_e`: 1 for a uniform router, larger when routing concentrates."""
    counts = torch.bincount(top_i.reshape(-1), minlength=num_experts).to(probs.dtype)
    f = counts / counts.sum()  # share of assignments (not differentiable, as in Switch)
    p = probs.mean(dim=0)
    return num_experts * (f * p).sum()


def _vision_blocks(model: nn.Module) -> list[nn.Module]:
    transformer = getattr(getattr(model, "visual", None), "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise ValueError("MoE upcycling needs an open_clip ViT image tower (visual.transformer)")
    return list(blocks)


def upcycle_vision(
    model: nn.Module,
    num_experts: int = 4,
    top_k: int = 2,
    blocks: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Replace the dense FFN of the chosen ViT blocks (default: all) by an upcycled MoE.

    The router starts from a small seeded normal init (std 0.02): near-uniform routing, and
    the experts are exact copies, so outputs equal the dense model's. Returns the layout.
    """
    resblocks = _vision_blocks(model)
    chosen = list(range(len(resblocks))) if blocks is None else sorted(blocks)
    for i in chosen:
        block = resblocks[i]
        if isinstance(block.mlp, MoEFeedForward):
            raise ValueError(f"visual block {i} is already a mixture of experts")
        dense = block.mlp
        d_model = dense.c_fc.in_features
        moe = MoEFeedForward([copy.deepcopy(dense) for _ in range(num_experts)], d_model, top_k)
        with torch.no_grad():
            init = torch.randn(moe.router.weight.shape, generator=generator) * 0.02
            moe.router.weight.copy_(init)
        moe.to(device=dense.c_fc.weight.device, dtype=dense.c_fc.weight.dtype)
        block.mlp = moe
    return {"num_experts": num_experts, "top_k": top_k, "blocks": chosen}


def layout_of(model: nn.Module) -> dict[str, Any] | None:
    """The MoE layout of a model (None when it has no MoE layer)."""
    try:
        resblocks = _vision_blocks(model)
    except ValueError:
        return None
    found = [(i, b.mlp) for i, b in enumerate(resblocks) if isinstance(b.mlp, MoEFeedForward)]
    if not found:
        return None
    first = found[0][1]
    return {"num_experts": first.num_experts, "top_k": first.top_k, "blocks": [i for i, _ in found]}


def restore_layout(model: nn.Module, layout: dict[str, Any] | None) -> None:
    """Give a freshly built dense model the saved MoE structure (weights are loaded after)."""
    if not layout:
        return
    upcycle_vision(model, int(layout["num_experts"]), int(layout["top_k"]), list(layout["blocks"]))


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """Every MoE layer of the model."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def balance_loss(model: nn.Module) -> torch.Tensor:
    """Mean load-balancing term of the MoE layers' last forward pass."""
    terms = [m.last_balance_loss for m in moe_layers(model) if m.last_balance_loss is not None]
    if not terms:
        raise RuntimeError("no MoE layer has run a forward pass yet")
    return torch.stack(terms).mean()
