"""Multi-process training plumbing: torchrun detection, process group, device per process.

Owns: reading torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), starting and ending the
process group (nccl on CUDA, gloo on CPU), choosing this process's device, and the few collective
calls the trainer needs. Without torchrun everything degrades to a single process with no group.
Must not: wrap models or decide what rank 0 writes (the trainer does).
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from stemsplit.engine.separator import resolve_device
from stemsplit.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The engine's device choice (`auto`: CUDA, then MPS, then CPU), with one GPU per local rank."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one; return where this process stands and its device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_name)
    if "RANK" not in os.environ:
        raise ConfigError(f"WORLD_SIZE is {world} but RANK is not set: start multi-process training with torchrun")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank), device


def teardown(dist: Dist, finished: bool) -> None:
    """End the process group while the interpreter is fully alive.

    The DDP wrapper of the finished run sits in reference cycles that keep the group's backend
    alive; left to interpreter shutdown, gloo's worker threads are destroyed there and abort the
    process now and then ("terminate called without an active exception"). So the cycles are
    collected first. After a finished run every rank also waits for the others, so none tears
    down connections a peer still uses; after a failure a failed peer may never arrive.
    """
    if dist.active and torch_dist.is_initialized():
        gc.collect()
        if finished:
            torch_dist.barrier()
        torch_dist.destroy_process_group()


def mean(dist: Dist, value: torch.Tensor) -> torch.Tensor:
    """The average of a scalar tensor over all processes."""
    if not dist.active:
        return value
    value = value.detach().clone()
    torch_dist.all_reduce(value)
    return value / dist.world


def from_main(dist: Dist, value: Any) -> Any:
    """Rank 0's value of a picklable object, on every process (plain data only: scores, flags)."""
    if not dist.active:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    if dist.active:
        torch_dist.barrier()
