"""Multi-process data parallelism under `torchrun`: process group, rank helpers, collectives.

`torchrun --standalone --nproc_per_node N -m tasks.teacher` starts N copies of a stage; each
sees WORLD_SIZE, RANK and LOCAL_RANK in its environment. `setup(device)` (the trainer calls
it) joins the process group from those variables: gloo on CPU, nccl on GPU (one GPU per
local rank). Without WORLD_SIZE > 1 nothing is initialised and every helper answers as for
a single process, so the same code runs on a laptop and on several GPUs.

Two collectives are all the trainer needs, both written so that N processes reproduce one
process with the same global batch (see tasks.training.gradients):
- `all_gather_cat`: every rank's per-sample features, concatenated in rank order;
- `all_reduce_sum_`: gradients (and a few scalars) summed across ranks, one flat buffer per
  dtype, so a step costs one collective however many parameters the model has.
Only the main process (rank 0) writes logs, checkpoints and model files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when unset or not a number)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def world_size() -> int:
    """Number of processes: the process group's size, else WORLD_SIZE, else 1."""
    return dist.get_world_size() if dist.is_initialized() else env_world_size()


def rank() -> int:
    """This process's rank: the process group's, else RANK from the environment, else 0."""
    if dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def local_rank() -> int:
    """This process's index on its machine (LOCAL_RANK, else 0): its GPU under torchrun."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single process): the one that writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class World:
    """The processes training together: this rank, their number, and this rank's device."""

    rank: int
    size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device: torch.device) -> World:
    """Join the process group when WORLD_SIZE > 1 (idempotent) and return this rank's World.

    On GPU each rank uses `cuda:LOCAL_RANK` (nccl); on CPU the ranks talk over gloo. The
    rendezvous (MASTER_ADDR / MASTER_PORT) is torchrun's, read from the environment.
    """
    if device.type == "cuda" and env_world_size() > 1:
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if env_world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        backend = dist.get_backend()
        if device.type == "cpu" and backend == "nccl":
            raise RuntimeError(
                "the process group uses nccl but training runs on CPU: use device 'auto' or "
                "'cuda' with nccl, or start the group with gloo"
            )
    return World(rank=rank(), size=world_size(), device=device)


def teardown() -> None:
    """Leave the process group (stage CLIs call this once the stage is done)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module_(module: torch.nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers to every rank (same start, whatever the init)."""
    if not world.distributed:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def all_gather_cat(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's `tensor` (same shape on each) concatenated along dim 0, in rank order.

    The result carries no gradient: the trainer differentiates the loss with respect to
    this gathered copy and sends each rank its own slice of that gradient (gradients.py).
    """
    if not world.distributed:
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum_(tensors: list[torch.Tensor], world: World) -> None:
    """Sum each tensor across ranks in place, one flat collective per dtype."""
    if not world.distributed or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_gradients_(
    params: list[torch.nn.Parameter], scalars: torch.Tensor, world: World
) -> torch.Tensor:
    """Sum the parameters' gradients and `scalars` across ranks; return the summed scalars.

    A parameter that got no gradient on some rank (e.g. an expert no token of that rank's
    slice was routed to) gets zeros there, so it is updated exactly when one process with
    the whole batch would update it; one that got none on any rank keeps `grad = None`.
    """
    if not world.distributed:
        return scalars
    has_grad = torch.tensor(
        [p.grad is not None for p in params], dtype=torch.int32, device=scalars.device
    )
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    grads = []
    for p, any_rank in zip(params, has_grad.tolist(), strict=True):
        if not any_rank:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    scalars = scalars.clone()
    all_reduce_sum_([*grads, scalars], world)
    return scalars
