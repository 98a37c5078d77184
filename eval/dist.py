"""Several processes (``torchrun`` / ``deepspeed`` set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): each rank
encodes a share of the sentence sets, rank 0 gathers the embeddings (gloo, pickled numpy arrays) and scores.

The share is a longest-processing-time split by character count, a pure function of the inputs, so every rank
computes the same plan without communicating. Embeddings of one set never depend on the rank that made them.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a launcher."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init() -> tuple[int, int]:
    """Join the launcher's process group when WORLD_SIZE > 1 (gloo for objects; nccl too on CUDA)."""
    rank, size = world()
    if size > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    return world()


def device_for(choice: str) -> torch.device:
    """``auto``: this rank's GPU (LOCAL_RANK) when there is one, else the CPU."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(choice)


def plan(sizes: dict[str, int], size: int) -> list[list[str]]:
    """Split named work items over ``size`` ranks: largest first onto the least-loaded rank (ties: lower rank)."""
    loads, shares = [0] * size, [[] for _ in range(size)]
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        rank = min(range(size), key=lambda r: (loads[r], r))
        loads[rank] += sizes[name]
        shares[rank].append(name)
    return shares


def gather(local: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """All ranks' embeddings on rank 0 (None elsewhere); a no-op in one process."""
    rank, size = world()
    if size == 1 or not dist.is_initialized():
        return local
    parts = [None] * size if rank == 0 else None
    dist.gather_object(local, parts, dst=0)
    if rank != 0:
        return None
    merged: dict[str, np.ndarray] = {}
    for part in parts:
        merged.update(part)
    return merged


def broadcast(value):
    """Rank 0's ``value`` on every rank."""
    if world()[1] == 1 or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
