"""One optimiser step's gradients: micro-batches and ranks that add up to the global batch.

A contrastive loss couples every sample of the batch, so neither gradient accumulation nor
data parallelism may compute it per micro-batch or per rank. The scheme (open_clip's
accumulation, in GradCache's exact form, Gao et al. 2021):

1. each rank computes the per-sample features of its micro-batches (without a graph when
   there are several) and the ranks all-gather them: every rank holds the features of the
   GLOBAL batch, in global-batch order;
2. the loss runs ONCE over those features, as leaf tensors: its backward gives the
   gradient with respect to every sample's features, and the gradient of the loss's own
   parameters (e.g. `logit_scale`) directly; that direct part is divided by the number of
   ranks, so after the sum across ranks it counts once;
3. each micro-batch is run again with a graph and back-propagated with its slice of the
   feature gradient (plus its share of the objective's `aux_` losses);
4. the caller sums the gradients across ranks (distributed.all_reduce_gradients_).

The result is the gradient of one process on the whole batch, up to float summation order.
open_clip's own accumulation recomputes the loss per micro-batch and so adds the direct
`logit_scale` gradient `accum_freq` times; here it is added once. Caveats: a model with
dropout draws different masks in steps 1 and 3 (the clipops models have none); `aux_`
losses are per micro-batch terms weighted by their share of the batch, which equals the
full-batch term only when the term is a mean over samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tasks.device import autocast
from tasks.training import distributed
from tasks.training.data import Batch
from tasks.training.objective import Features, Objective, split_aux, split_loss

Logs = dict[str, float | torch.Tensor]


@dataclass
class StepLosses:
    """What one step's backward computed, detached: the objective's loss over the global
    batch, the `aux_` terms (this rank's share of each) and the objective's own logs."""

    loss: torch.Tensor
    aux: dict[str, torch.Tensor]
    logs: Logs


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of every tensor of a batch (all must have the batch dim first)."""
    return {k: v[start:stop] for k, v in batch.items()}


def check_batch(batch: Batch, rows: int) -> None:
    """Every tensor of a batch must have `rows` rows, so that it can be sliced per sample."""
    for key, value in batch.items():
        if value.dim() == 0 or value.shape[0] != rows:
            raise ValueError(
                f"batch[{key!r}] has shape {tuple(value.shape)} for a batch of {rows} rows; "
                "a BatchSource returns per-row tensors with the batch dim first"
            )


def _check_features(per_sample: Features, aux: Features, rows: int) -> None:
    for key, value in per_sample.items():
        if value.dim() == 0 or value.shape[0] != rows:
            raise ValueError(
                f"objective.features()[{key!r}] has shape {tuple(value.shape)} for a batch of "
                f"{rows}; per-sample tensors need the batch dim first (a scalar loss term "
                "goes under an 'aux_' key)"
            )
    for key, value in aux.items():
        if value.numel() != 1:
            raise ValueError(
                f"objective.features()[{key!r}] is an aux_ term, so it must be a scalar loss; "
                f"got shape {tuple(value.shape)}"
            )


def _sum(values: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float32, device=like.device)
    for v in values:
        total = total + v.float().reshape(())
    return total


def simple_backward(
    model: torch.nn.Module, objective: Objective, batch: Batch, device: torch.device
) -> StepLosses:
    """One process, one micro-batch: features, loss (+ aux terms), backward."""
    rows = len(next(iter(batch.values())))
    with autocast(device):
        per_sample, aux = split_aux(objective.features(model, batch))
        _check_features(per_sample, aux, rows)
        loss, logs = split_loss(objective.loss(model, per_sample))
    (loss.float() + _sum(list(aux.values()), loss)).backward()
    aux_terms = {k: v.detach().float().reshape(()) for k, v in aux.items()}
    return StepLosses(loss.detach().float(), aux_terms, logs)


def cached_backward(
    model: torch.nn.Module,
    objective: Objective,
    micro_batches: list[Batch],
    world: distributed.World,
    trainable: list[torch.nn.Parameter],
) -> StepLosses:
    """Several micro-batches and/or ranks (see the module docstring).

    Leaves in `.grad` this rank's part of the global-batch gradient; the caller sums the
    parts (and the `aux` shares) across ranks.
    """
    device = world.device
    sizes = [len(next(iter(mb.values()))) for mb in micro_batches]
    local_rows = sum(sizes)
    global_rows = local_rows * world.size
    keep_graph = len(micro_batches) == 1  # one micro-batch: reuse its graph in step 3

    # 1. per-sample features of this rank's rows, then of the global batch
    kept: tuple[Features, Features] | None = None
    cached: list[Features] = []
    with torch.set_grad_enabled(keep_graph), autocast(device):
        for mb, rows in zip(micro_batches, sizes, strict=True):
            per_sample, aux = split_aux(objective.features(model, mb))
            _check_features(per_sample, aux, rows)
            if keep_graph:
                kept = (per_sample, aux)
            cached.append({k: v.detach() for k, v in per_sample.items()})
    local = {k: torch.cat([c[k] for c in cached]) for k in cached[0]}
    leaves = {}
    for key, value in local.items():
        gathered = distributed.all_gather_cat(value, world)
        leaves[key] = gathered.requires_grad_(gathered.is_floating_point())

    # 2. the loss once over the global batch: feature gradients + direct parameter gradients
    with autocast(device):
        loss, logs = split_loss(objective.loss(model, leaves))
    loss.backward()
    if world.distributed:
        for p in trainable:
            if p.grad is not None:
                p.grad.div_(world.size)

    # 3. each micro-batch again, with a graph, back-propagated with its gradient slice
    aux_terms: dict[str, torch.Tensor] = {}
    offset = world.rank * local_rows
    for mb, rows in zip(micro_batches, sizes, strict=True):
        if kept is not None:
            per_sample, aux = kept
        else:
            with autocast(device):
                per_sample, aux = split_aux(objective.features(model, mb))
        share = rows / global_rows
        outputs, grads = [], []
        for key, value in per_sample.items():
            grad = leaves[key].grad
            if value.requires_grad and grad is not None:
                outputs.append(value)
                grads.append(grad[offset : offset + rows].to(value.dtype))
        for key, value in aux.items():
            weighted = value.float().reshape(()) * share
            if weighted.requires_grad:
                outputs.append(weighted)
                grads.append(None)
            previous = aux_terms.get(key)
            aux_terms[key] = weighted.detach() if previous is None else previous + weighted.detach()
        if outputs:
            torch.autograd.backward(outputs, grads)
        offset += rows
    return StepLosses(loss.detach().float(), aux_terms, logs)
