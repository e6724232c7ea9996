"""Data-parallel training over the processes ``torchrun`` starts (one per GPU, or several on CPU).

A plain process is rank 0 of 1, so single-process training is unchanged. With ``W`` ranks, each
step's batch (``TrainConfig.batch_size`` images, the same global batch a single process sees) is
split into ``W`` equal slices, DistributedDataParallel averages the gradients, and rank 0 alone
evaluates, checkpoints and reports.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current() -> ProcessGroup:
    if not (dist.is_available() and dist.is_initialized()):
        return ProcessGroup()
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


@contextmanager
def joined_from_environment() -> Iterator[ProcessGroup]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK,
    MASTER_ADDR...): NCCL with one GPU per rank when CUDA is present, Gloo on CPU. Without torchrun
    this is rank 0 of 1 and does nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        yield current()
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def shard(batch: Any, group: ProcessGroup) -> Any:
    """This rank's equal slice of a global batch (tensors split along the first dimension)."""
    if not group.distributed:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.shape[0] % group.world_size:
            raise ValueError(
                f"a batch of {batch.shape[0]} cannot be split evenly over {group.world_size} "
                f"processes: choose a batch_size divisible by the number of processes"
            )
        size = batch.shape[0] // group.world_size
        return batch[group.rank * size : (group.rank + 1) * size]
    if isinstance(batch, dict):
        return {key: shard(value, group) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard(value, group) for value in batch)
    return batch


def mean_over_ranks(value: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """The mean of a scalar over all ranks (for logging the global loss)."""
    if not group.distributed:
        return value
    total = value.detach().clone().float()
    dist.all_reduce(total)
    return total / group.world_size
