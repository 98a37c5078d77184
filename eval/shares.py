"""Sentence sets split over ranks: each rank encodes a share, rank 0 gathers the embeddings and scores.

The share is a longest-processing-time split by character count, a pure function of the inputs, so every rank
computes the same plan without communicating. Embeddings of one set never depend on the rank that made them.
"""

from __future__ import annotations

import numpy as np

from runtime import collectives


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
    parts = collectives.gather_object(local, dst=0)
    if parts is None:
        return None
    merged: dict[str, np.ndarray] = {}
    for part in parts:
        merged.update(part)
    return merged
