"""k nearest neighbours by cosine in both directions, exact in blocks or approximate through a faiss index.

Exact (``knn_exact``): x and y are cut into blocks of rows; each (bx, by) block of cosines is computed once
and serves both the forward top-k of its x rows and the backward top-k of its y rows, so the n_x x n_y product is
computed once (LASER's ``mine_bitexts`` searches twice). Peak memory is one block of cosines plus the two blocks
of rows and the running top-k lists, (n_x + n_y) x k pairs: at bx = by = 4096 the cosine block is 64 MiB, whatever
n_x and n_y are. Inputs may be memory-mapped fp16 / fp32 files; a block is read, converted to float32 and
L2-normalised (by faiss, as LASER does) when it is used.

Ties follow faiss's ``IndexFlatIP`` (as ``eval.xsim`` documents): among equal cosines at the k-th place the lowest
ids are kept, and each list is ordered by cosine descending, equal cosines by id descending. Merging running
lists with a total order (cosine, then id) makes the result independent of the block and rank layout, so a run
sharded over ranks gives the one-process result.

Approximate (``knn_faiss``): a faiss ``index_factory`` string (e.g. ``IVF4096,PQ64``) with inner-product metric,
trained on a random sample of the indexed side, searched with ``nprobe`` lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eval.xsim import _faiss_order, _topk_rows

DEFAULT_BLOCK = 4096  # rows per block on each side: a (4096, 4096) float32 cosine block is 64 MiB


@dataclass
class Neighbours:
    """Top-k lists of both directions: ``fwd_*`` (n_x, kx) over y, ``bwd_*`` (n_y, ky) over x, in faiss order."""

    fwd_sim: np.ndarray
    fwd_ind: np.ndarray
    bwd_sim: np.ndarray
    bwd_ind: np.ndarray


def normalized_block(a: np.ndarray) -> np.ndarray:
    """A float32 C-contiguous copy of rows ``a`` (fp16 / fp32, possibly memory-mapped), L2-normalised."""
    out = np.array(a, dtype=np.float32, order="C", copy=True)
    try:
        import faiss
    except ImportError:  # same formula, possibly not the same last bit as faiss
        norms = np.sqrt((out * out).sum(axis=1, keepdims=True, dtype=np.float32))
        return np.divide(out, norms, out=out, where=norms > 0)
    faiss.normalize_L2(out)
    return out


def merge_topk(va: np.ndarray, ia: np.ndarray, vb: np.ndarray, ib: np.ndarray, k: int):
    """The top-k of two lists per row, lowest ids first among equal values, returned in faiss order."""
    vals, ids = np.concatenate([va, vb], axis=1), np.concatenate([ia, ib], axis=1)
    keep = np.lexsort((ids, -vals), axis=-1)[:, :k]  # primary: value descending; then id ascending
    return _faiss_order(np.take_along_axis(vals, keep, axis=1), np.take_along_axis(ids, keep, axis=1))


def empty_lists(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)


def _cosines(xb: np.ndarray, yb: np.ndarray, device: torch.device) -> torch.Tensor:
    """(bx, by) float32 cosines of two normalised blocks: numpy's sgemm on the CPU (faiss's bits), torch elsewhere."""
    if device.type == "cpu":
        return torch.from_numpy(xb @ yb.T)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round the cosines to 10 mantissa bits
    try:
        return torch.from_numpy(xb).to(device) @ torch.from_numpy(yb).to(device).T
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def x_blocks(n_x: int, block: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """This rank's x row blocks: fixed boundaries, dealt round-robin, so any world size computes the same blocks."""
    starts = range(0, n_x, block)
    return [(s, min(s + block, n_x)) for i, s in enumerate(starts) if i % world == rank]


def knn_exact(x, y, kx: int, ky: int, *, block: int = DEFAULT_BLOCK, device=None, rank: int = 0, world: int = 1):
    """Exact top-kx of each x row over y and top-ky of each y row over x, over this rank's x blocks only.

    Returns ``(rows, Neighbours)``: ``rows`` the (start, end) x blocks done here (their forward lists are final,
    the others zero); the backward lists cover this rank's x rows. ``merge_ranks`` combines the ranks."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_x, n_y = x.shape[0], y.shape[0]
    kx, ky = min(kx, n_y), min(ky, n_x)
    fwd_sim, fwd_ind = np.zeros((n_x, kx), np.float32), np.zeros((n_x, kx), np.int64)
    bwd = [empty_lists(min(block, n_y - c0)) for c0 in range(0, n_y, block)]
    rows = x_blocks(n_x, block, rank, world)
    for r0, r1 in rows:
        xb = normalized_block(x[r0:r1])
        row_v, row_i = empty_lists(r1 - r0)
        for j, c0 in enumerate(range(0, n_y, block)):
            c1 = min(c0 + block, n_y)
            s = _cosines(xb, normalized_block(y[c0:c1]), device)  # (bx, by)
            v, i = _topk_rows(s, min(kx, c1 - c0))
            row_v, row_i = merge_topk(row_v, row_i, v, i + c0, kx)
            v, i = _topk_rows(s.T, min(ky, r1 - r0))
            bwd[j] = merge_topk(*bwd[j], v, i + r0, ky)
            del s
        fwd_sim[r0:r1], fwd_ind[r0:r1] = row_v, row_i
    bwd_sim = np.concatenate([b[0] for b in bwd]) if bwd else np.zeros((0, ky), np.float32)
    bwd_ind = np.concatenate([b[1] for b in bwd]) if bwd else np.zeros((0, ky), np.int64)
    return rows, Neighbours(fwd_sim, fwd_ind, bwd_sim, bwd_ind)


def merge_ranks(parts: list[tuple[list, Neighbours]], ky: int) -> Neighbours:
    """One ``Neighbours`` from every rank's ``knn_exact``: forward rows taken from the rank that owns them,
    backward lists merged (the total order makes the merge independent of the number of ranks)."""
    first = parts[0][1]
    fwd_sim, fwd_ind = np.empty_like(first.fwd_sim), np.empty_like(first.fwd_ind)
    bwd_sim, bwd_ind = empty_lists(first.bwd_sim.shape[0])
    for rows, nb in parts:
        for r0, r1 in rows:
            fwd_sim[r0:r1], fwd_ind[r0:r1] = nb.fwd_sim[r0:r1], nb.fwd_ind[r0:r1]
        bwd_sim, bwd_ind = merge_topk(bwd_sim, bwd_ind, nb.bwd_sim, nb.bwd_ind, ky)
    return Neighbours(fwd_sim, fwd_ind, bwd_sim, bwd_ind)


# ---------------------------------------------------------------- approximate search (faiss)


def faiss_or_none():
    """The faiss module, or None when it is not installed on this node."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def build_index(base, factory: str, *, sample: int = 2**18, nprobe: int = 16, block: int = DEFAULT_BLOCK, seed=0):
    """A trained faiss index (inner product) over the normalised rows of ``base``: trained on up to ``sample``
    random rows, filled block by block."""
    import faiss

    n, d = base.shape
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
        index.train(normalized_block(base[rows]))
    for r0 in range(0, n, block):
        index.add(normalized_block(base[r0 : r0 + block]))
    try:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    except RuntimeError:  # an index without inverted lists (e.g. "Flat", "PQ64")
        pass
    return index


def search_index(index, queries, k: int, block: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) similarities and ids of the normalised ``queries`` in ``index``, block by block (ids -1: none found)."""
    sims, ids = [], []
    for r0 in range(0, queries.shape[0], block):
        s, i = index.search(normalized_block(queries[r0 : r0 + block]), k)
        sims.append(s)
        ids.append(i)
    return np.concatenate(sims), np.concatenate(ids)


def knn_faiss(x, y, kx: int, ky: int, factory: str, *, sample: int = 2**18, nprobe: int = 16) -> Neighbours:
    """Approximate top-k both ways through two faiss indexes (one over y, one over x) built from ``factory``."""
    fwd = search_index(build_index(y, factory, sample=sample, nprobe=nprobe), x, min(kx, y.shape[0]))
    bwd = search_index(build_index(x, factory, sample=sample, nprobe=nprobe), y, min(ky, x.shape[0]))
    return Neighbours(*_fill_missing(*fwd), *_fill_missing(*bwd))


def _fill_missing(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entries an approximate search left empty (id -1: too few vectors in the probed lists) get cosine -1, the
    lowest there is, and the row's first id, so they lower the k-NN mean as a far neighbour would."""
    missing = ids < 0
    if missing.any():
        sims, ids = sims.copy(), ids.copy()
        sims[missing] = -1.0
        ids[missing] = np.broadcast_to(np.maximum(ids[:, :1], 0), ids.shape)[missing]
    return sims, ids
