"""One training loop for every stage (teacher, distill, finetune), read top to bottom.

    result = train(model, data, ClipObjective(), params.teacher, device, log_path)

- `model`: any nn.Module; only parameters with `requires_grad` are optimised.
- `data`: a `BatchSource` (see tasks.training.data): `len()`, `.to(device)` and
  `.batch(index, generator) -> dict of tensors`. `PairTensors` serves image-caption pairs.
- `objective`: an `Objective` (tasks.training.objective): per-sample `features(model, batch)`
  then `loss(model, features)`; the method lives there (contrastive `ClipObjective`;
  distillation and the fine-tuning recipes pass their own).
- `params`: a `TrainParams` (epochs, batch_size, lr, weight_decay, warmup_steps, grad_clip,
  seed).

AdamW without decay on gains/biases/logit_scale, linear warm-up then cosine, gradient
clipping, logit scale clamped to ln(100) as in CLIP, bf16 autocast on GPU, a tqdm bar with
loss and samples/s, and a CSV (step, epoch, loss, lr, extra logs) for DVC plots. Seeded:
two CPU runs with the same seed produce identical weights.
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

from tasks.device import autocast
from tasks.params import TrainParams
from tasks.training.data import BatchSource
from tasks.training.objective import Objective, objective_loss
from tasks.training.schedule import lr_at, param_groups

MAX_LOGIT_SCALE = math.log(100.0)


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


def train(
    model: torch.nn.Module,
    data: BatchSource,
    objective: Objective,
    params: TrainParams,
    device: torch.device,
    log_path: str | Path | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train `model` in place on `data` with `objective`; see the module docstring."""
    # --- setup: seeds, sizes, optimiser ---------------------------------------------------
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model.to(device).train()
    data = data.to(device)
    n = len(data)
    if n < 2:
        raise ValueError(f"need at least 2 training rows for a contrastive batch, got {n}")
    batch_size = min(params.batch_size, n)
    # The last partial batch is dropped: a contrastive loss over a handful of pairs is noise.
    steps_per_epoch = n // batch_size
    total_steps = steps_per_epoch * params.epochs
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (are both towers locked?)")
    optimizer = torch.optim.AdamW(
        param_groups(model, params.weight_decay), lr=params.lr, betas=(0.9, 0.98), eps=1e-6
    )

    # --- the loop -------------------------------------------------------------------------
    rows: list[dict[str, float]] = []
    step, loss_value, epoch_losses = 0, float("nan"), []
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=desc, unit="step", leave=False)
    for epoch in range(params.epochs):
        order = torch.randperm(n, generator=generator)
        epoch_losses = []
        for b in range(steps_per_epoch):
            lr = lr_at(step, params.lr, params.warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = data.batch(order[b * batch_size : (b + 1) * batch_size], generator)

            with autocast(device):
                loss, logs = objective_loss(objective, model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {step} (epoch {epoch}); "
                    f"try a lower lr than {params.lr} or more warmup_steps"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if params.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
            optimizer.step()
            logit_scale = getattr(model, "logit_scale", None)
            if isinstance(logit_scale, torch.nn.Parameter):
                with torch.no_grad():
                    logit_scale.clamp_(0, MAX_LOGIT_SCALE)

            loss_value = loss.item()
            epoch_losses.append(loss_value)
            rows.append({"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, **logs})
            step += 1
            rate = step * batch_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{rate:.0f}")
            bar.update(1)
    bar.close()
    wall = time.perf_counter() - start
    model.eval()

    # --- the record -----------------------------------------------------------------------
    if log_path is not None:
        write_loss_csv(rows, log_path)
    samples = total_steps * batch_size
    return TrainResult(
        steps=total_steps,
        epochs=params.epochs,
        samples=samples,
        final_loss=loss_value,
        last_epoch_loss=sum(epoch_losses) / max(len(epoch_losses), 1),
        wall_s=round(wall, 3),
        samples_per_s=round(samples / max(wall, 1e-9), 1),
        log_path=str(log_path) if log_path is not None else None,
    )


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
