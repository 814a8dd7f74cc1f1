"""Plain ``torch.distributed`` set-up for ``torchrun`` (single process when launched without it).

``torchrun`` (``python -m torch.distributed.run``) sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous; we only read them. NCCL on CUDA, gloo on CPU. Multi-node runs use the same script with
``torchrun --nnodes N --node_rank i --rdzv_endpoint host:port``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_mean_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Average gradients (or any tensors) over ranks, in place."""
        if not self.distributed:
            return
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world_size)

    def broadcast_(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        if not self.distributed:
            return
        for t in tensors:
            dist.broadcast(t, src)

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def shutdown(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment; else one CPU/GPU process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        here = True
    return DistContext(rank, world, local_rank, dev, here)
