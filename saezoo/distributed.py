"""Data-parallel training under ``torchrun`` (torch.distributed; gloo on CPU, nccl on GPU).

Every rank builds the same SAE from the same seed and reads the same global batch; each
trains on its slice, gradients are averaged with all-reduce, and rank 0 alone writes
checkpoints, TensorBoard events and reports. Without ``torchrun`` (WORLD_SIZE unset or 1)
every function here is a no-op.
"""

from __future__ import annotations

import atexit
import importlib
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment, once."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # torch.distributed.nn.functional binds group.WORLD as a default argument when it is
        # imported, and torch._dynamo imports it; imported after the group exists, it would keep
        # the group alive past destroy_process_group. Imported first, it binds None.
        importlib.import_module("torch.distributed.nn.functional")

        dist.init_process_group(backend)
        # A rank whose work is done (every rank but 0 during the final evaluation) exits while
        # gloo's worker threads may still hold tensors; if the group lives into interpreter
        # teardown they abort the process (SIGABRT, "terminate called without an active
        # exception", about one exit in ten) and torchrun then kills rank 0 mid-evaluation.
        # Freed while Python is whole, the group joins its threads first.
        atexit.register(_close)


def _close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def local_device(name: torch.device) -> torch.device:
    """Under torchrun on CUDA, each rank uses the GPU of its LOCAL_RANK."""
    if dist.is_initialized() and name.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return name


def shard(x: Tensor) -> Tensor:
    """This rank's slice of a global batch."""
    return x.chunk(world())[rank()] if world() > 1 else x


def average_gradients(module: nn.Module) -> None:
    """Mean of every gradient over ranks: equal slices make it the global batch's gradient."""
    if world() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective, not one per tensor
    dist.all_reduce(flat)
    flat /= world()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flags: Tensor) -> Tensor:
    """Element-wise OR of an integer tensor over ranks (firing masks, stop requests)."""
    if world() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def sum_ranks(values: Tensor) -> Tensor:
    """Element-wise sum of a tensor over ranks, in place (statistics every rank must agree on)."""
    if world() > 1:
        dist.all_reduce(values)
    return values
