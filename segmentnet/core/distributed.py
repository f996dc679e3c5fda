"""Rank, world size, device and the wrapped/unwrapped model, in one place.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if preference == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(preference)


def setup_distributed(device: str = "auto") -> DistEnv:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu or auto")
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP and torch.compile wrappers (its state_dict has no prefixes)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_mean(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t) / env.world_size


def all_ranks_agree(flags: list[torch.Tensor], env: DistEnv) -> list[bool]:
    """For each flag (a one-element bool tensor), whether it is true on every rank; one all-reduce."""
    t = torch.stack([f.reshape(()).to(device=env.device, dtype=torch.int32) for f in flags])
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return [bool(v) for v in t.tolist()]


def broadcast_from_main(value, env: DistEnv):
    """Rank 0's value (any picklable object) on every rank."""
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=env.device if env.device.type == "cuda" else None)
    return box[0]


def broadcast_buffers(model: nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics, which each rank updates itself)."""
    if env.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
