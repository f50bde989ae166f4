"""Data-parallel training across processes (`torchrun --nproc_per_node N -m reviewgan.cli train ...`).

Every rank builds the same global batch (same seeds, same data), takes its slice `[rank::world]`,
and gradients are summed across ranks before each optimiser step. The loss of each slice is scaled
so that the summed gradient equals the gradient of the global batch's loss: N processes reach
the weights one process reaches on the same global batch (tests/test_dist.py checks this).

Gradients are all-reduced by hand rather than through DistributedDataParallel, because the
gradient penalty differentiates through the critic twice, which DDP's hooks do not support.
Without torchrun's environment variables nothing here does anything.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return tdist.get_rank(), tdist.get_world_size()


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(batch, r: int | None = None, w: int | None = None):
    """This rank's slice of a global batch (indices, or tensors along dim 0)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    return batch[r::w] if w > 1 else batch


def sum_scalar(x: float) -> float:
    if world_size() == 1:
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    tdist.all_reduce(t)
    return float(t.item())


def sum_gradients(params) -> None:
    """Sum gradients over ranks in one flat all-reduce (losses are pre-scaled to make the sum right)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if world_size() > 1:
        tdist.barrier()
