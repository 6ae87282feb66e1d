"""Training checkpoints: written atomically, resumed only by the run that wrote them.

A checkpoint is one file (torch.save, loaded with `weights_only=True`) holding what the
trainer needs to continue exactly where it stopped: the trained parameters and buffers
(frozen parameters are not stored: the fingerprint proves they are the same), the
optimiser state, the next step, the torch RNG states, and the loss rows so far. The batch
order and augmentations are functions of (seed, epoch) and (seed, step) (see
tasks.training.row_random.derive_seed), so nothing else is needed: on CPU a resumed run
ends with the same weights and loss CSV, bit for bit, as an uninterrupted one.

It is written to a temp file in the same folder, flushed and fsync'ed, then renamed over
the previous one (`os.replace` is atomic), so a kill at any moment leaves either the old
checkpoint or the new one, never half of one.

The fingerprint ties a checkpoint to its run: the training parameters (except those that
do not change the result: `checkpoint_every`, `resume`, and `accum_steps`, which only
changes float summation order, as does the number of processes), the objective's type, the
model's structure and initial weights, and the data size. A checkpoint whose fingerprint
differs is refused with a message naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.errors import StageError
from tasks.params import TrainParams

FORMAT_VERSION = 1
# TrainParams fields that do not change what a run computes (beyond float summation order).
NOT_FINGERPRINTED = frozenset({"checkpoint_every", "resume", "accum_steps"})


class CheckpointMismatchError(StageError):
    """A checkpoint exists but was written by a different run (params, model or data)."""


def default_checkpoint_path(log_path: str | Path) -> Path:
    """Where a run logging to `plots/<stage>_loss.csv` keeps its checkpoint: next to it,
    `plots/<stage>_loss.ckpt` (not a DVC output, so `dvc repro` after a kill keeps it)."""
    return Path(log_path).with_suffix(".ckpt")


def _tensor_digest(digest: Any, tensor: torch.Tensor) -> None:
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(data.view(torch.uint8).numpy().tobytes())


def fingerprint(
    params: TrainParams,
    model: torch.nn.Module,
    objective: object,
    data_rows: int,
    batch_size: int,
) -> dict[str, Any]:
    """What identifies a run: compared key by key when a checkpoint is loaded."""
    structure = hashlib.sha256()
    weights = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        structure.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        _tensor_digest(weights, tensor)
    for name, p in model.named_parameters():
        structure.update(f"{name}.requires_grad={p.requires_grad};".encode())
    kept = params.model_dump(mode="json", exclude=set(NOT_FINGERPRINTED))
    return {
        "format": FORMAT_VERSION,
        "params": json.dumps(kept, sort_keys=True),
        "params_type": type(params).__name__,
        "objective": f"{type(objective).__module__}.{type(objective).__qualname__}",
        "model_structure": structure.hexdigest(),
        "initial_weights": weights.hexdigest(),
        "data_rows": data_rows,
        "batch_size": batch_size,
    }


def _frozen_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.requires_grad}


@dataclass
class Resumed:
    """What a loaded checkpoint restores besides the model and optimiser it was applied to."""

    step: int
    rows: list[dict[str, float]]


def save_checkpoint(
    path: str | Path,
    *,
    fingerprint: dict[str, Any],
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rows: list[dict[str, float]],
) -> None:
    """Write the state after `step` steps to `path` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frozen = _frozen_names(model)
    state = {
        "fingerprint": fingerprint,
        "step": step,
        "model": {k: v for k, v in model.state_dict().items() if k not in frozen},
        "optimizer": optimizer.state_dict(),
        "rows": rows,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(
    path: str | Path,
    expected: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> Resumed | None:
    """Restore model, optimiser and RNG from `path` if it exists; None when there is none.

    Raises CheckpointMismatchError when the checkpoint belongs to a different run.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or corrupt file: say which, do not guess
        raise CheckpointMismatchError(
            f"{path} is not a readable clipops checkpoint ({exc}); delete it to start over"
        ) from exc
    found = state.get("fingerprint", {})
    differ = sorted(k for k in expected if found.get(k) != expected[k])
    if differ:
        details = "; ".join(f"{k}: {found.get(k)!r:.80} vs now {expected[k]!r:.80}" for k in differ)
        raise CheckpointMismatchError(
            f"{path} was written by a different run ({', '.join(differ)} differ: {details}). "
            "Delete the checkpoint, or set `resume: false` in this stage's params to start "
            "over (it is then overwritten)"
        )
    frozen = _frozen_names(model)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or set(missing) - frozen:
        raise CheckpointMismatchError(
            f"{path} does not fit the model (missing {sorted(set(missing) - frozen)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); delete it to start over"
        )
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    return Resumed(step=int(state["step"]), rows=list(state["rows"]))


def remove_checkpoint(path: str | Path) -> None:
    """Delete a finished run's checkpoint (and a temp file a kill may have left)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
