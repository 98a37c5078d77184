"""Several processes (``torchrun`` / ``deepspeed`` set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): each rank
encodes a share of the sentence sets, rank 0 gathers the embeddings (gloo, pickled numpy arrays) and scores.

The share is a longest-processing-time split by character count, a pure function of the inputs, so every rank
computes the same plan without communicating. Embeddings of one set never depend on the rank that made them.
The process group and every collective come from pipeline/distributed.py (the one module that calls them).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from pipeline import distributed

world = distributed.world
barrier = distributed.barrier
broadcast = distributed.broadcast_object
finish = distributed.finish


def init(timeout_minutes: float = 60.0) -> tuple[int, int]:
    """Join the launcher's process group when WORLD_SIZE > 1 (LOCAL_RANK's GPU selected first; gloo for host
    objects, nccl for CUDA tensors)."""
    return distributed.init_eval(timeout_minutes)


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
    parts = distributed.gather_object(local, dst=0)
    if parts is None:
        return None
    merged: dict[str, np.ndarray] = {}
    for part in parts:
        merged.update(part)
    return merged
