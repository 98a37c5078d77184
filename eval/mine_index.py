"""Approximate k-NN for ``python -m eval.mine --index FACTORY``: one faiss index per side, built once and shared.

Rank 0 trains and fills each index (``eval.knn.build_index``) and writes it to ``CACHE/index/{side}.{key}.faiss``
(key: the factory string, the training sample size and the identity of the side's embeddings), so a rerun on the
same embeddings reuses it; the other ranks wait at a barrier and read it (memory-mapped where faiss can). Every
rank then searches its blocks of each side in the other side's index, candidates rescored exactly
(``eval.knn.knn_index``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from eval.knn import Part, build_index, knn_index, set_nprobe, x_blocks
from runtime import collectives, devices


def index_path(cache: Path, side: str, key: str, args, shape: tuple[int, int]) -> Path:
    digest = hashlib.sha256(json.dumps([key, args.index, args.index_sample, list(shape)]).encode()).hexdigest()
    return cache / "index" / f"{side}.{digest[:16]}.faiss"


def _read(path: Path):
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    except RuntimeError:  # index types without memory-mapped reading
        return faiss.read_index(str(path))


def shared_index(base, path: Path, args, rank: int):
    """The index over ``base``: built by rank 0 unless ``path`` holds it already, then read by the others."""
    import faiss

    index = None
    if rank == 0 and not path.is_file():
        index = build_index(base, args.index, sample=args.index_sample, nprobe=args.nprobe, block=args.block)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    collectives.barrier()
    if index is None:
        index = _read(path)
        set_nprobe(index, args.nprobe)
    return index


def approximate_part(args, x, y, keys: list[str], cache: Path, rank: int, size: int) -> Part:
    """This rank's forward lists (its x blocks in the index over y) and backward lists (its y blocks in the index
    over x)."""
    index_y = shared_index(y, index_path(cache, "trg", keys[1], args, y.shape), args, rank)
    index_x = shared_index(x, index_path(cache, "src", keys[0], args, x.shape), args, rank)
    k, device = args.neighborhood, devices.device_for(args.device)
    rows_x, rows_y = x_blocks(x.shape[0], args.block, rank, size), x_blocks(y.shape[0], args.block, rank, size)
    fwd_sim, fwd_ind, fwd_exact = knn_index(x, y, index_y, k, rows_x, rerank=args.rerank, device=device)
    bwd_sim, bwd_ind, bwd_exact = knn_index(y, x, index_x, k, rows_y, rerank=args.rerank, device=device)
    return Part(rows_x, fwd_sim, fwd_ind, bwd_sim, bwd_ind, fwd_exact + bwd_exact, bwd_rows=rows_y)
