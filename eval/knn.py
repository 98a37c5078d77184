"""k nearest neighbours by cosine in both directions, exact in blocks or approximate through a faiss index.

Exact (``knn_exact``): x and y are cut into blocks of rows; each (bx, by) block of cosines is computed once
and serves both the forward top-k of its x rows and the backward top-k of its y rows, so the n_x x n_y product is
computed once (LASER's ``mine_bitexts`` searches twice). Peak memory is one block of cosines plus the two blocks
of rows and the running top-k lists, (n_x + n_y) x k pairs: at bx = by = 4096 the cosine block is 64 MiB, whatever
n_x and n_y are. Inputs may be memory-mapped fp16 / fp32 files; a block is read, converted to float32 and
L2-normalised (by faiss, as LASER does) when it is used. A y side that fits ``cache_bytes`` once normalised is kept
(on the GPU when the search runs there) instead of being read again for every x block.

Ties follow faiss's ``IndexFlatIP`` (as ``eval.xsim`` documents): among equal cosines at the k-th place the lowest
ids are kept, and each list is ordered by cosine descending, equal cosines by id descending. Merging running
lists with a total order (cosine, then id) makes the result independent of the rank layout: x blocks have fixed
boundaries and are dealt to ranks, so a run sharded over ranks computes the same blocks as one process.

The cosines are numpy's sgemm on the CPU and torch's fp32 GEMM (TF32 off) on CUDA. They may differ from faiss's
search in the last bit (different BLAS builds and tile shapes), so scores agree with LASER's to float32 rounding;
equal embeddings still give equal cosines, so ties are resolved as faiss resolves them.

Approximate (``build_index`` + ``knn_index``): a faiss ``index_factory`` string (e.g. ``IVF4096,PQ64``) with the
inner-product metric, trained on a seeded random sample of the indexed side and filled block by block. Each query
asks the index for ``k x rerank`` candidates, which are rescored with exact cosines from the embeddings: the scores
of the pairs found are exact, what is approximate is which neighbours are found. A query for which the index
returns fewer than k candidates (too few vectors in the probed lists) is searched exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eval.xsim import _faiss_order, _topk_rows

DEFAULT_BLOCK = 4096  # rows per block on each side: a (4096, 4096) float32 cosine block is 64 MiB
DEFAULT_CACHE_BYTES = 2**30  # a normalised y side up to 1 GiB (262k rows at d = 1024) is read once


@dataclass
class Neighbours:
    """Top-k lists of both directions: ``fwd_*`` (n_x, kx) over y, ``bwd_*`` (n_y, ky) over x, in faiss order."""

    fwd_sim: np.ndarray
    fwd_ind: np.ndarray
    bwd_sim: np.ndarray
    bwd_ind: np.ndarray
    exact_rows: int = 0  # approximate search: query rows searched exactly (the index returned fewer than k)


@dataclass
class Part:
    """One rank's share of a search: final forward lists of its x ``rows`` (concatenated in that order) and either
    backward lists of every y row over those x rows only (exact search; ``merge_ranks`` merges them across ranks)
    or, with ``bwd_rows``, final backward lists of those y rows (approximate search)."""

    rows: list[tuple[int, int]]
    fwd_sim: np.ndarray
    fwd_ind: np.ndarray
    bwd_sim: np.ndarray
    bwd_ind: np.ndarray
    exact_rows: int = 0
    bwd_rows: list[tuple[int, int]] | None = None


def normalized_block(a: np.ndarray) -> np.ndarray:
    """A float32 C-contiguous copy of rows ``a`` (fp16 / fp32, possibly memory-mapped), L2-normalised."""
    out = np.array(a, dtype=np.float32, order="C", copy=True)
    faiss = faiss_or_none()
    if faiss is None:  # same formula, possibly not the same last bit as faiss
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


def x_blocks(n_x: int, block: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """This rank's x row blocks: fixed boundaries, dealt round-robin, so any world size computes the same blocks."""
    starts = range(0, n_x, block)
    return [(s, min(s + block, n_x)) for i, s in enumerate(starts) if i % world == rank]


class _YBlocks:
    """Normalised y blocks on the search device, kept after the first pass when the side fits ``cache_bytes``."""

    def __init__(self, y, block: int, device: torch.device, cache_bytes: int):
        self.y, self.device = y, device
        self.bounds = [(c0, min(c0 + block, y.shape[0])) for c0 in range(0, y.shape[0], block)]
        self.cache = {} if y.shape[0] * y.shape[1] * 4 <= cache_bytes else None

    def get(self, j: int):
        if self.cache is not None and j in self.cache:
            return self.cache[j]
        c0, c1 = self.bounds[j]
        out = normalized_block(self.y[c0:c1])
        if self.device.type != "cpu":
            out = torch.from_numpy(out).to(self.device)
        if self.cache is not None:
            self.cache[j] = out
        return out


def _cosines(xb, yb) -> torch.Tensor:
    """(bx, by) float32 cosines of two normalised blocks: numpy's sgemm on the CPU, torch's GEMM on a device."""
    if isinstance(yb, np.ndarray):
        return torch.from_numpy(xb @ yb.T)
    return xb @ yb.T


def _pick_device(device) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def knn_exact(x, y, kx: int, ky: int, *, block=DEFAULT_BLOCK, device=None, rank=0, world=1, cache_bytes=None) -> Part:
    """Exact top-kx of each x row over y and top-ky of each y row over x, for this rank's x blocks.

    kx and ky are clamped to n_y and n_x, as LASER clamps them. One process: ``merge_ranks([part], n_x)``."""
    device = _pick_device(device)
    n_x, n_y = x.shape[0], y.shape[0]
    kx, ky = min(kx, n_y), min(ky, n_x)
    ys = _YBlocks(y, block, device, DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes)
    bwd = [empty_lists(c1 - c0) for c0, c1 in ys.bounds]
    rows, fwd = x_blocks(n_x, block, rank, world), []
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round the cosines to 10 mantissa bits
    try:
        for r0, r1 in rows:
            xb = normalized_block(x[r0:r1])
            if device.type != "cpu":
                xb = torch.from_numpy(xb).to(device)
            row_v, row_i = empty_lists(r1 - r0)
            for j, (c0, c1) in enumerate(ys.bounds):
                s = _cosines(xb, ys.get(j))  # (bx, by)
                v, i = _topk_rows(s, min(kx, c1 - c0))
                row_v, row_i = merge_topk(row_v, row_i, v, i + c0, kx)
                if ky:
                    v, i = _topk_rows(s.T, min(ky, r1 - r0))
                    bwd[j] = merge_topk(*bwd[j], v, i + r0, ky)
                del s
            fwd.append((row_v, row_i))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    fwd_sim, fwd_ind = (np.concatenate(a) for a in zip(*fwd)) if fwd else empty_lists(0)
    return Part(rows, fwd_sim, fwd_ind, *(np.concatenate(a) for a in zip(*bwd)))


def _place(out_sim: np.ndarray, out_ind: np.ndarray, rows, sim: np.ndarray, ind: np.ndarray) -> None:
    at = 0
    for r0, r1 in rows:
        out_sim[r0:r1], out_ind[r0:r1] = sim[at : at + r1 - r0], ind[at : at + r1 - r0]
        at += r1 - r0


def merge_ranks(parts: list[Part], n_x: int) -> Neighbours:
    """One ``Neighbours`` from every rank's ``Part``: final rows placed where they belong, partial backward lists
    merged (the total order makes the merge independent of the number of ranks)."""
    kx = max(p.fwd_sim.shape[1] for p in parts)
    ky = max(p.bwd_sim.shape[1] for p in parts)
    fwd_sim, fwd_ind = np.zeros((n_x, kx), np.float32), np.zeros((n_x, kx), np.int64)
    for part in parts:
        _place(fwd_sim, fwd_ind, part.rows, part.fwd_sim, part.fwd_ind)
    if parts[0].bwd_rows is not None:
        n_y = max((r1 for p in parts for _, r1 in p.bwd_rows), default=0)
        bwd_sim, bwd_ind = np.zeros((n_y, ky), np.float32), np.zeros((n_y, ky), np.int64)
        for part in parts:
            _place(bwd_sim, bwd_ind, part.bwd_rows, part.bwd_sim, part.bwd_ind)
    else:
        bwd_sim, bwd_ind = empty_lists(parts[0].bwd_sim.shape[0])
        for part in parts:
            if part.bwd_sim.shape[1]:
                bwd_sim, bwd_ind = merge_topk(bwd_sim, bwd_ind, part.bwd_sim, part.bwd_ind, ky)
    return Neighbours(fwd_sim, fwd_ind, bwd_sim, bwd_ind, sum(p.exact_rows for p in parts))


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
    set_nprobe(index, nprobe)
    return index


def set_nprobe(index, nprobe: int) -> None:
    import faiss

    try:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    except RuntimeError:  # an index without inverted lists (e.g. "Flat", "PQ64", "HNSW32")
        pass


def _rescore(qb: np.ndarray, base, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosines of the candidates ``cand`` (b, c) (id -1: none) and the best k by (cosine desc, id asc);
    missing entries get cosine -inf."""
    valid = cand >= 0
    uniq, inverse = np.unique(cand[valid], return_inverse=True)
    rows = normalized_block(base[uniq]) if uniq.size else np.zeros((0, qb.shape[1]), np.float32)
    cos = np.full(cand.shape, -np.inf, np.float32)
    cos[valid] = np.einsum("ij,ij->i", qb[np.nonzero(valid)[0]], rows[inverse])
    ids = np.where(valid, cand, np.iinfo(np.int64).max)
    keep = np.lexsort((ids, -cos), axis=-1)[:, :k]
    return np.take_along_axis(cos, keep, axis=1), np.take_along_axis(ids, keep, axis=1)


def knn_index(queries, base, index, k: int, rows: list[tuple[int, int]], *, rerank: int = 4, device=None):
    """Top-k of the query ``rows`` blocks in ``index`` (over ``base``), rescored exactly; ``(sim, ind, exact)``
    in faiss order, concatenated in ``rows`` order; ``exact``: query rows searched exactly instead."""
    k = min(k, base.shape[0])
    want, sims, ids, exact = min(base.shape[0], k * max(1, rerank)), [], [], 0
    for r0, r1 in rows:
        qb = normalized_block(queries[r0:r1])
        sub = 1024  # rescoring gathers (sub x want) rows of base at a time: 64 MiB at want = 16, d = 1024
        search = index.search
        parts = [_rescore(qb[a : a + sub], base, search(qb[a : a + sub], want)[1], k) for a in range(0, r1 - r0, sub)]
        v, i = (np.concatenate(p) for p in zip(*parts))
        short = np.flatnonzero(~np.isfinite(v[:, -1]))
        if short.size:
            exact += int(short.size)
            part = knn_exact(qb[short], base, k, 0, device=device)
            v[short], i[short] = part.fwd_sim, part.fwd_ind
        v, i = _faiss_order(v, i)
        sims.append(v)
        ids.append(i)
    if not sims:
        return *empty_lists(0), 0
    return np.concatenate(sims), np.concatenate(ids), exact


def missing_faiss_message(factory: str) -> str:
    return (
        f"--index {factory}: faiss is not installed on this node; searching exactly in blocks instead (time grows "
        "with n_src x n_trg; install faiss-cpu or faiss-gpu for the approximate index)"
    )
