"""Margin-based bitext mining on k-NN lists: the semantics of LASER's ``source/mine_bitexts.py``.

Margin (Artetxe & Schwenk 2019, arXiv 1811.01136): a candidate pair (x, y) with cosine ``a`` is scored
``margin(a, (mean_k(x) + mean_k(y)) / 2)`` where ``mean_k(x)`` is the mean cosine of x's k nearest neighbours among
the y side and ``mean_k(y)`` that of y's among the x side; ``ratio`` is ``a / b``, ``distance`` ``a - b``,
``absolute`` ``a``. All of it in float32, as LASER computes it; a score written out is that float32 value.

Retrieval (``--mode mine``): ``fwd`` the best-scoring candidate of every source sentence, ``bwd`` of every target
sentence, ``intersect`` the forward pairs that are also backward pairs, ``max`` all forward and backward pairs
taken greedily by descending score, each sentence used at most once, those scoring above ``--threshold`` written
(a stable sort: equal scores keep forward pairs first, in source order, then backward pairs, in target order;
LASER's ``np.argsort`` is not stable, so there the order of exactly equal scores depends on the numpy build).

Both directions' k-NN means are computed in every mode (the margin needs both; LASER's script computes the
backward one only for ``max`` and ``intersect``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eval.knn import DEFAULT_BLOCK, Neighbours, knn_exact, merge_ranks

MODES = ("mine", "score", "search")
RETRIEVALS = ("fwd", "bwd", "max", "intersect")
MARGINS = ("ratio", "distance", "absolute")


def apply_margin(a: np.ndarray, b: np.ndarray, margin: str) -> np.ndarray:
    """float32 ``margin(a, b)``: a the cosines, b the averaged k-NN means."""
    if margin == "ratio":
        return a / b
    if margin == "distance":
        return a - b
    if margin == "absolute":
        return a
    raise ValueError(f"--margin must be one of {MARGINS}, got {margin!r}")


def candidate_scores(sim, ind, own_mean, other_mean, margin: str) -> np.ndarray:
    """(n, k) float32 scores of each row's candidates: ``margin(sim, (own_mean[row] + other_mean[cand]) / 2)``."""
    return apply_margin(sim, (own_mean[:, None] + other_mean[ind]) / np.float32(2), margin)


@dataclass
class Pairs:
    """Mined pairs in output order: float32 ``scores`` and row indices into the (unique) source / target sides."""

    scores: np.ndarray
    src: np.ndarray
    trg: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def knn_means(nb: Neighbours) -> tuple[np.ndarray, np.ndarray]:
    """float32 mean cosine of every source row's k neighbours and of every target row's."""
    return nb.fwd_sim.mean(axis=1), nb.bwd_sim.mean(axis=1)


def best_candidates(nb: Neighbours, margin: str):
    """Forward and backward best candidate and its score: ``(fwd_best, fwd_score, bwd_best, bwd_score)``; the first
    of equal scores in faiss order wins, as ``argmax`` picks it in LASER."""
    fwd_mean, bwd_mean = knn_means(nb)
    out = []
    for sim, ind, own, other in (
        (nb.fwd_sim, nb.fwd_ind, fwd_mean, bwd_mean),
        (nb.bwd_sim, nb.bwd_ind, bwd_mean, fwd_mean),
    ):
        scores = candidate_scores(sim, ind, own, other, margin)
        arg = scores.argmax(axis=1)[:, None]
        out += [np.take_along_axis(ind, arg, axis=1)[:, 0], np.take_along_axis(scores, arg, axis=1)[:, 0]]
    return tuple(out)


def _greedy_max(fwd_best, fwd_score, bwd_best, bwd_score, threshold: float) -> Pairs:
    """LASER's ``max`` retrieval: every forward and backward pair by descending score, each side used once, the
    pairs scoring above ``threshold`` written. Pairs at or below it come after all written ones in that order, so
    they are dropped before the (sequential) greedy pass without changing its result."""
    n_x, n_y = fwd_best.shape[0], bwd_best.shape[0]
    src = np.concatenate([np.arange(n_x), bwd_best])
    trg = np.concatenate([fwd_best, np.arange(n_y)])
    scores = np.concatenate([fwd_score, bwd_score])
    above = np.flatnonzero(scores > threshold)
    order = above[np.argsort(-scores[above], kind="stable")]  # equal scores: forward pairs first, in row order
    seen_src, seen_trg = np.zeros(n_x, bool), np.zeros(n_y, bool)
    keep = []
    for i, s, t in zip(order.tolist(), src[order].tolist(), trg[order].tolist()):
        if not seen_src[s] and not seen_trg[t]:
            seen_src[s] = seen_trg[t] = True
            keep.append(i)
    keep = np.asarray(keep, dtype=np.int64)
    return Pairs(scores[keep], src[keep], trg[keep])


def mine(nb: Neighbours, margin: str, retrieval: str, threshold: float = 0.0) -> Pairs:
    """The pairs ``--mode mine`` writes, in LASER's order. As in LASER's script, ``threshold`` (default 0) filters
    the ``max`` retrieval only (scores strictly above it); ``fwd``, ``bwd`` and ``intersect`` write every pair."""
    fwd_best, fwd_score, bwd_best, bwd_score = best_candidates(nb, margin)
    if retrieval == "max":
        return _greedy_max(fwd_best, fwd_score, bwd_best, bwd_score, threshold)
    if retrieval == "fwd":
        return Pairs(fwd_score, np.arange(fwd_best.shape[0]), fwd_best)
    if retrieval == "bwd":
        return Pairs(bwd_score, bwd_best, np.arange(bwd_best.shape[0]))
    if retrieval == "intersect":
        src = np.flatnonzero(bwd_best[fwd_best] == np.arange(fwd_best.shape[0]))
        return Pairs(fwd_score[src], src, fwd_best[src])
    raise ValueError(f"--retrieval must be one of {RETRIEVALS}, got {retrieval!r}")


def neighbours(x, y, k: int, *, device=None, block: int = DEFAULT_BLOCK) -> Neighbours:
    """Both directions' exact k-NN lists of two in-memory (or memory-mapped) sides in one process."""
    return merge_ranks([knn_exact(x, y, k, k, block=block, device=device)], x.shape[0])


def search(nb: Neighbours, margin: str) -> np.ndarray:
    """``--mode search``: the best target row of every source row (forward margin retrieval)."""
    return best_candidates(nb, margin)[0]


def score_aligned(cos: np.ndarray, src: np.ndarray, trg: np.ndarray, nb: Neighbours, margin: str) -> np.ndarray:
    """``--mode score``: float32 margin scores of given pairs (rows ``src[i]``, ``trg[i]``) with cosines ``cos``."""
    fwd_mean, bwd_mean = knn_means(nb)
    return apply_margin(cos, (fwd_mean[src] + bwd_mean[trg]) / np.float32(2), margin)


def row_cosines(x, y, src: np.ndarray, trg: np.ndarray, block: int = 4096) -> np.ndarray:
    """float32 cosines of the row pairs (x[src[i]], y[trg[i]]), normalised as the k-NN search normalises."""
    from eval.knn import normalized_block

    out = np.empty(src.shape[0], dtype=np.float32)
    for r0 in range(0, src.shape[0], block):
        xs, ys = normalized_block(x[src[r0 : r0 + block]]), normalized_block(y[trg[r0 : r0 + block]])
        out[r0 : r0 + block] = np.einsum("ij,ij->i", xs, ys)
    return out
