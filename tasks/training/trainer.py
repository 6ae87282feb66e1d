"""One training loop for every stage (teacher, distill, finetune), read top to bottom.

    result = train(model, data, ClipObjective(), params.teacher, device, log_path)

- `model`: any nn.Module; only parameters with `requires_grad` are optimised.
- `data`: a `BatchSource` (see tasks.training.data): `len()`, `.to(device)` and
  `.batch(index, generator) -> dict of per-row tensors`. `PairTensors` serves image-caption
  pairs.
- `objective`: an `Objective` (tasks.training.objective): per-sample `features(model, batch)`
  then `loss(model, features)`; the method lives there (contrastive `ClipObjective`;
  distillation and the fine-tuning recipes pass their own).
- `params`: a `TrainParams` (epochs, batch_size = the global batch, lr, weight_decay,
  warmup_steps, grad_clip, seed, accum_steps, checkpoint_every, resume).
- `checkpoint_path` (keyword): where the resumable checkpoint lives; by default next to
  `log_path` (`plots/<stage>_loss.ckpt`), none without a log path.

AdamW without decay on gains/biases/logit_scale, linear warm-up then cosine, gradient
clipping, logit scale clamped to ln(100) as in CLIP, bf16 autocast on GPU, a tqdm bar with
loss and samples/s, a CSV (step, epoch, loss, lr, extra logs) and a PNG of the loss curve
for DVC plots.

Scaling without code changes: `accum_steps` splits each step into micro-batches and
`torchrun --nproc_per_node N` splits it over N processes; both reproduce one process
running the whole batch (tasks.training.gradients), up to float summation order.

Determinism: the batch order of epoch e comes from (seed, e), step t's augmentations from
(seed, t), so two CPU runs with the same seed give identical weights, and a run resumed
from a checkpoint (written atomically every `checkpoint_every` steps) ends bit-identical to
an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tasks.errors import StageError
from tasks.params import TrainParams
from tasks.training import distributed
from tasks.training.checkpoint import (
    default_checkpoint_path,
    fingerprint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from tasks.training.data import Batch, BatchSource
from tasks.training.gradients import (
    StepLosses,
    cached_backward,
    check_batch,
    simple_backward,
    slice_batch,
)
from tasks.training.loss_plot import write_loss_png
from tasks.training.objective import Objective
from tasks.training.row_random import derive_seed
from tasks.training.schedule import lr_at, param_groups

MAX_LOGIT_SCALE = math.log(100.0)
# On GPU, reading a loss back (.item()) waits for the step to finish: do it this often.
GPU_SYNC_EVERY = 25


@dataclass
class TrainResult:
    """What a training run did, for cards and stage summaries."""

    steps: int
    epochs: int
    samples: int
    final_loss: float
    last_epoch_loss: float
    wall_s: float
    samples_per_s: float
    log_path: str | None
    resumed_from_step: int = 0
    world_size: int = 1
    accum_steps: int = 1


@dataclass(frozen=True)
class BatchPlan:
    """How each step's global batch splits over processes and micro-batches."""

    batch_size: int  # the global batch
    accum_steps: int
    world_size: int
    steps_per_epoch: int
    epochs: int

    @property
    def local_size(self) -> int:
        return self.batch_size // self.world_size

    @property
    def micro_size(self) -> int:
        return self.local_size // self.accum_steps

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @classmethod
    def build(cls, rows: int, params: TrainParams, world_size: int) -> BatchPlan:
        """Sizes for `rows` training rows; a batch that does not split evenly is a StageError."""
        if rows < 2:
            raise ValueError(f"need at least 2 training rows for a contrastive batch, got {rows}")
        unit = params.accum_steps * world_size
        if params.batch_size % unit:
            raise StageError(
                f"batch_size={params.batch_size} does not split into accum_steps="
                f"{params.accum_steps} x {world_size} process(es) = {unit} equal micro-batches: "
                f"use a batch_size divisible by {unit}"
            )
        batch = params.batch_size
        if rows < batch:  # a small data set: one batch of as many rows as split evenly
            batch = rows - rows % unit
            if batch < max(2, unit):
                raise StageError(
                    f"{rows} training rows cannot fill one batch split {unit} ways "
                    f"(accum_steps={params.accum_steps} x {world_size} processes)"
                )
        # The last partial batch is dropped: a contrastive loss over a handful of pairs is noise.
        return cls(batch, params.accum_steps, world_size, rows // batch, params.epochs)


def make_optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.AdamW:
    """AdamW (CLIP's betas and eps) over the trainable parameters, fused where torch can.

    The fused kernel updates every tensor in one pass (CPU and CUDA): on the tiny config it
    takes ~1-6 ms a step where the per-tensor loop took 15-76 ms.
    """
    groups = param_groups(model, params.weight_decay)
    kwargs = {"lr": params.lr, "betas": (0.9, 0.98), "eps": 1e-6}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not support
        return torch.optim.AdamW(groups, **kwargs)


def epoch_order(rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The row order of one epoch: a permutation fixed by (seed, epoch)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(rows, generator=generator)


def rank_batch(
    data: BatchSource,
    global_index: torch.Tensor,
    step_seed: int,
    plan: BatchPlan,
    world: distributed.World,
) -> Batch:
    """This rank's rows of the global batch, built so that they do not depend on the split.

    Sources with per-row randomness (`split_invariant`) build just this rank's rows; others
    build the whole global batch from the same step generator and keep this rank's slice.
    """
    generator = torch.Generator().manual_seed(step_seed)
    lo, hi = world.rank * plan.local_size, (world.rank + 1) * plan.local_size
    if world.distributed and not getattr(data, "split_invariant", False):
        batch = data.batch(global_index, generator)
        check_batch(batch, plan.batch_size)
        return slice_batch(batch, lo, hi)
    batch = data.batch(global_index[lo:hi], generator)
    check_batch(batch, plan.local_size)
    return batch


def train(
    model: torch.nn.Module,
    data: BatchSource,
    objective: Objective,
    params: TrainParams,
    device: torch.device,
    log_path: str | Path | None = None,
    desc: str = "train",
    *,
    checkpoint_path: str | Path | None = None,
) -> TrainResult:
    """Train `model` in place on `data` with `objective`; see the module docstring.

    Under torchrun every rank calls this with the same arguments; only rank 0 writes the
    log, the plot and checkpoints. Several `train()` calls in one stage need distinct
    log (or checkpoint) paths, or each would find the other's checkpoint.
    """
    # --- setup: processes, seeds, sizes, optimiser, checkpoint ------------------------------
    world = distributed.setup(device)
    device, main = world.device, world.rank == 0
    torch.manual_seed(params.seed)
    model.to(device).train()
    data = data.to(device)
    plan = BatchPlan.build(len(data), params, world.size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (are both towers locked?)")
    optimizer = make_optimizer(model, params)
    distributed.broadcast_module_(model, world)
    logit_scale = getattr(model, "logit_scale", None)
    if not isinstance(logit_scale, torch.nn.Parameter):
        logit_scale = None

    if checkpoint_path is None and log_path is not None:
        checkpoint_path = default_checkpoint_path(log_path)
    checkpointing = checkpoint_path is not None and params.checkpoint_every > 0
    run_id = (
        fingerprint(params, model, objective, len(data), plan.batch_size) if checkpointing else None
    )
    rows: list[dict[str, float]] = []
    start_step = 0
    if checkpointing and params.resume:
        resumed = load_checkpoint(checkpoint_path, run_id, model, optimizer)
        if resumed is not None:
            start_step, rows = resumed.step, resumed.rows

    # --- the loop -------------------------------------------------------------------------
    sync_every = GPU_SYNC_EVERY if device.type == "cuda" else 1
    pending: list[tuple[int, int, float, torch.Tensor, dict]] = []
    order, order_epoch = None, -1
    start = time.perf_counter()
    bar = tqdm(
        total=plan.total_steps,
        initial=start_step,
        desc=desc,
        unit="step",
        leave=False,
        disable=not main,
    )
    for step in range(start_step, plan.total_steps):
        epoch, b = divmod(step, plan.steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(data), params.seed, epoch), epoch
        lr = lr_at(step, params.lr, params.warmup_steps, plan.total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        global_index = order[b * plan.batch_size : (b + 1) * plan.batch_size]
        batch = rank_batch(data, global_index, derive_seed(params.seed, "batch", step), plan, world)

        optimizer.zero_grad(set_to_none=True)
        if plan.accum_steps == 1 and not world.distributed:
            losses = simple_backward(model, objective, batch, device)
        else:
            m = plan.micro_size
            micro = [slice_batch(batch, j * m, (j + 1) * m) for j in range(plan.accum_steps)]
            losses = cached_backward(model, objective, micro, world, trainable)
        if world.distributed:
            _sum_over_ranks(losses, trainable, world)
        if params.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
        optimizer.step()
        if logit_scale is not None:
            with torch.no_grad():
                logit_scale.clamp_(0, MAX_LOGIT_SCALE)

        pending.append((step, epoch, lr, *_total(losses)))
        done = step + 1
        if len(pending) >= sync_every or done == plan.total_steps:
            rows.extend(_flush(pending, params))
            rate = (done - start_step) * plan.batch_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", samples_s=f"{rate:.0f}")
        bar.update(1)
        if checkpointing and done % params.checkpoint_every == 0 and done < plan.total_steps:
            rows.extend(_flush(pending, params))
            if main:
                save_checkpoint(
                    checkpoint_path,
                    fingerprint=run_id,
                    step=done,
                    model=model,
                    optimizer=optimizer,
                    rows=rows,
                )
    bar.close()
    wall = time.perf_counter() - start
    model.eval()

    # --- the record (rank 0) --------------------------------------------------------------
    if main and log_path is not None:
        write_loss_csv(rows, log_path)
        write_loss_png(rows, Path(log_path).with_suffix(".png"), f"{desc} loss")
    if main and checkpointing:
        remove_checkpoint(checkpoint_path)
    ran = plan.total_steps - start_step
    last_epoch = [r["loss"] for r in rows if r["epoch"] == plan.epochs - 1]
    return TrainResult(
        steps=plan.total_steps,
        epochs=params.epochs,
        samples=plan.total_steps * plan.batch_size,
        final_loss=rows[-1]["loss"] if rows else float("nan"),
        last_epoch_loss=sum(last_epoch) / max(len(last_epoch), 1),
        wall_s=round(wall, 3),
        samples_per_s=round(ran * plan.batch_size / max(wall, 1e-9), 1),
        log_path=str(log_path) if log_path is not None else None,
        resumed_from_step=start_step,
        world_size=world.size,
        accum_steps=plan.accum_steps,
    )


def _sum_over_ranks(
    losses: StepLosses, trainable: list[torch.nn.Parameter], world: distributed.World
) -> None:
    """Sum the ranks' gradient parts and their aux shares (one flat all-reduce per dtype)."""
    names = sorted(losses.aux)
    shares = (
        torch.stack([losses.aux[k] for k in names])
        if names
        else torch.zeros(0, device=world.device)
    )
    summed = distributed.all_reduce_gradients_(trainable, shares, world)
    losses.aux = dict(zip(names, summed.unbind(), strict=True))


def _total(losses: StepLosses) -> tuple[torch.Tensor, dict]:
    """The logged loss (objective loss + aux terms, still on device) and the step's logs."""
    total = losses.loss
    for value in losses.aux.values():
        total = total + value
    # Detached: a log tensor still holding its graph would keep it alive until the flush.
    logs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in losses.logs.items()}
    return total, {**logs, **losses.aux}


def _flush(pending: list, params: TrainParams) -> list[dict[str, float]]:
    """Pending steps as CSV rows (one device sync for all of them); empties `pending`.

    A non-finite loss stops training here, naming the first bad step.
    """
    if not pending:
        return []
    values = torch.stack([p[3] for p in pending]).tolist()
    out = []
    for (step, epoch, lr, _, logs), loss in zip(pending, values, strict=True):
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss} at step {step} (epoch {epoch}); "
                f"try a lower lr than {params.lr} or more warmup_steps"
            )
        row = {"step": step, "epoch": epoch, "loss": loss, "lr": lr}
        row.update({k: float(v) for k, v in logs.items()})
        out.append(row)
    pending.clear()
    return out


def write_loss_csv(rows: list[dict[str, float]], path: str | Path) -> None:
    """Write the per-step log (step, epoch, loss, lr, then any extra keys) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = sorted({k for r in rows for k in r} - {"step", "epoch", "loss", "lr"})
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "epoch", "loss", "lr", *extra])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
