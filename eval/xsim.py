"""xsim / xsim++ scoring with the semantics of LASER's ``source/xsim.py``, one similarity pass for both directions.

LASER (facebookresearch/LASER, source/xsim.py, Artetxe & Schwenk 2019 margin, arXiv 1811.01136):

1. L2-normalise both sides (``faiss.normalize_L2``; zero rows stay zero).
2. k nearest neighbours by inner product both ways (``IndexFlatIP``): ``cos_xy, idx_xy`` (n_x, k) and
   ``cos_yx`` (n_y, k); ``avg_x = mean_k(cos_xy)``, ``avg_y = mean_k(cos_yx)`` (float32 means).
3. For each source row i and candidate j = idx_xy[i, c]: ``a = cos_xy[i, c]``, ``b = (avg_x[i] + avg_y[j]) / 2``;
   ``ratio`` scores ``a / b``, ``distance`` scores ``a - b``, all in float32. ``absolute`` is the 1-NN.
4. The answer is the first best-scoring candidate (``argmax``); an error when it is not the aligned row (or,
   in LASER's ``eval.py`` default, when its target text differs from the aligned row's text).

Ties, as faiss 1.15 resolves them (checked on duplicate rows): among equal similarities at the k-th place the
lowest row ids are kept (a heap entry is replaced only by a strictly larger value), and equal similarities are
returned in descending id order, so the argmax picks the highest id of a tied group. Both are reproduced here.

Exactness: on the CPU the similarities come from numpy's float32 GEMM (the OpenBLAS that faiss also calls); they
were bitwise equal to faiss's search in both directions on the development machine, so ``xsim`` and ``xsim_ref``
agree on every row, ties included. On CUDA, torch's fp32 GEMM (TF32 off) may differ from faiss in the last bit.

Memory: one (b, n_y) float32 block of similarities at a time; b = min(block_bytes / (4 n_y), 1024) rows, e.g.
256 MiB blocks are 335 rows at n_y = 200k. The same block serves the forward top-k (rows) and a running backward top-k
(columns), so the n_x x n_y product is computed once, where LASER computes it twice.
"""

from __future__ import annotations

import numpy as np
import torch

MARGINS = ("ratio", "distance", "absolute")
DEFAULT_BLOCK_BYTES = 256 * 2**20
# Row cap of a block: at n = 10k, d = 1024 (2 cores, unloaded) 1024-row blocks took 0.66 s of GEMM and 0.17 s of
# column top-k in all, one 6710-row block 0.85 s and 0.56 s (the strided top-k over dim 0 grows with the height).
MAX_BLOCK_ROWS = 1024


def _check_inputs(x: np.ndarray, y: np.ndarray, margin: str, k: int) -> None:
    if margin not in MARGINS:
        raise ValueError(f"margin must be one of {MARGINS}, got {margin!r}")
    for name, a in (("x", x), ("y", y)):
        if not isinstance(a, np.ndarray) or a.ndim != 2:
            raise ValueError(f"{name} must be a 2-D numpy array (rows, dim), got {type(a).__name__}")
        if a.shape[0] == 0:
            raise ValueError(f"{name} has no rows")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf values")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    if y.shape[0] < x.shape[0]:
        raise ValueError(f"y needs at least as many rows as x (aligned rows first): {y.shape[0]} < {x.shape[0]}")
    kmax = y.shape[0] if margin == "absolute" else min(x.shape[0], y.shape[0])
    if not 1 <= k <= kmax:
        raise ValueError(f"k must be in [1, {kmax}] for {x.shape[0]} x {y.shape[0]} rows, got {k}")


def _faiss():
    """faiss when installed, else None: ``nearest`` and ``xsim`` then normalise with numpy and search with the
    blocked exact scan below (an offline node's wheelhouse leaves faiss out; the references still need it)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _normalized(a: np.ndarray) -> np.ndarray:
    """A float32 C-contiguous copy, L2-normalised by faiss exactly as LASER does (the input is untouched); without
    faiss the same float32 arithmetic in numpy (x * (1 / ||x||), zero rows left zero)."""
    out = np.array(a, dtype=np.float32, order="C", copy=True)
    faiss = _faiss()
    if faiss is not None:
        faiss.normalize_L2(out)
        return out
    norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float32))
    nonzero = norms > 0
    out[nonzero] *= (np.float32(1) / norms[nonzero])[:, None]
    return out


def _margin_scores(cos: np.ndarray, ids: np.ndarray, avg_x: np.ndarray, avg_y: np.ndarray, margin: str):
    """(n, k) float32 scores; the same float32 operations as LASER's per-element loop."""
    b = (avg_x[:, None] + avg_y[ids]) / np.float32(2)
    return cos / b if margin == "ratio" else cos - b


def _best(cos: np.ndarray, ids: np.ndarray, avg_x, avg_y, margin: str) -> np.ndarray:
    if margin == "absolute":
        return ids[:, 0].astype(np.int64)
    scores = _margin_scores(cos, ids, avg_x, avg_y, margin)
    return np.take_along_axis(ids, scores.argmax(axis=1)[:, None], axis=1)[:, 0].astype(np.int64)


# ---------------------------------------------------------------- reference: two searches + a Python loop


def nearest_ref(x: np.ndarray, y: np.ndarray, margin: str = "ratio", k: int = 4) -> np.ndarray:
    """Best candidate per row of x, computed the straightforward way LASER does: two faiss searches and a
    Python loop over (row, candidate) for the margin. The baseline of ``eval.bench`` and of the tests."""
    import faiss

    _check_inputs(x, y, margin, k)
    xn, yn = _normalized(x), _normalized(y)
    index_y = faiss.IndexFlatIP(yn.shape[1])
    index_y.add(yn)
    if margin == "absolute":
        return index_y.search(xn, 1)[1][:, 0].astype(np.int64)
    index_x = faiss.IndexFlatIP(xn.shape[1])
    index_x.add(xn)
    cos_xy, idx_xy = index_y.search(xn, k)
    cos_yx, _ = index_x.search(yn, k)
    avg_x, avg_y = cos_xy.mean(axis=1), cos_yx.mean(axis=1)
    best = np.zeros(xn.shape[0], dtype=np.int64)
    for i in range(xn.shape[0]):
        scores = np.zeros(k)
        for c in range(k):
            b = (avg_x[i] + avg_y[idx_xy[i, c]]) / 2
            scores[c] = cos_xy[i, c] / b if margin == "ratio" else cos_xy[i, c] - b
        best[i] = idx_xy[i, scores.argmax()]
    return best


# ---------------------------------------------------------------- fast path: one blocked similarity pass


def _faiss_order(vals: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by similarity descending, equal similarities by id descending (faiss's output order)."""
    order = np.lexsort((-ids, -vals), axis=-1)
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _topk_rows(s: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of s (b, m) with faiss's tie rule: (b, k) float32 values and int64 ids."""
    if k == 1:  # torch.max returns the first maximal index: the lowest id, as faiss keeps it
        vals, ids = s.max(dim=1, keepdim=True)
        return vals.cpu().numpy(), ids.cpu().numpy()
    kk = min(k + 1, s.shape[1])
    vals, ids = torch.topk(s, kk, dim=1)  # sorted descending; order among equal values unspecified
    vals, ids = vals.cpu().numpy(), ids.cpu().numpy()
    if kk > k:
        # The k-th and (k+1)-th equal: which tied ids made the cut is arbitrary, faiss keeps the lowest ids.
        tied = np.flatnonzero(vals[:, k - 1] == vals[:, k])
        if tied.size:
            rows = s[torch.from_numpy(tied).to(s.device)]
            sv, si = torch.sort(rows, dim=1, descending=True, stable=True)  # ties in ascending id order
            vals[tied, :k], ids[tied, :k] = sv[:, :k].cpu().numpy(), si[:, :k].cpu().numpy()
        vals, ids = vals[:, :k], ids[:, :k]
    return _faiss_order(vals, ids)


def _merge_col_topk(running: torch.Tensor | None, s: torch.Tensor, k: int) -> torch.Tensor:
    """Running top-k values of each column of the (n_x, m) matrix, given its next row block s (b, m): (k', m)."""
    top = torch.topk(s, min(k, s.shape[0]), dim=0).values
    if running is not None:
        top = torch.cat([running, top])
        top = torch.topk(top, min(k, top.shape[0]), dim=0).values
    return top


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sim_block(xb: np.ndarray, yn: np.ndarray, y_dev: torch.Tensor | None) -> torch.Tensor:
    """Cosines of a row block against all of y: (b, n_y) float32."""
    if y_dev is None:
        return torch.from_numpy(xb @ yn.T)  # numpy sgemm: the same bits as faiss's search
    return torch.from_numpy(xb).to(y_dev.device) @ y_dev.T


def _scan(xn: np.ndarray, yn: np.ndarray, k_fwd: int, k_bwd: int, y_dev, block_bytes: int):
    """One pass over (b, n_y) blocks of cosines: forward top-k_fwd (values, ids), both (n_x, k_fwd), and the
    backward top-k_bwd values (n_y, k_bwd), descending as faiss returns them (None when k_bwd = 0)."""
    rows = max(1, min(xn.shape[0], block_bytes // (4 * yn.shape[0]), MAX_BLOCK_ROWS))
    cos, ids, col_top = [], [], None
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round the cosines to 10 mantissa bits
    try:
        for r0 in range(0, xn.shape[0], rows):
            s = _sim_block(xn[r0 : r0 + rows], yn, y_dev)  # (b, n_y)
            v, i = _topk_rows(s, k_fwd)
            cos.append(v)
            ids.append(i)
            if k_bwd:
                col_top = _merge_col_topk(col_top, s, k_bwd)
            del s
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    cos_yx = None if col_top is None else np.ascontiguousarray(col_top.T.cpu().numpy())
    return np.concatenate(cos), np.concatenate(ids), cos_yx


def _faiss_1nn(xn: np.ndarray, yn: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(yn.shape[1])
    index.add(yn)
    return index.search(xn, 1)[1][:, 0].astype(np.int64)


def nearest(
    x: np.ndarray,
    y: np.ndarray,
    margin: str = "ratio",
    k: int = 4,
    *,
    device: str | torch.device | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    gemm: str = "auto",
) -> np.ndarray:
    """Index into y of the best-scoring candidate for every row of x: (n_x,) int64 (LASER's ``_score_knn``).

    ``device``: None / "auto" (CUDA when available), "cpu", "cuda", ... ``gemm``: "numpy" (CPU only, faiss's
    bits), "torch" (torch.mm on ``device``), "auto" (numpy on the CPU, torch elsewhere)."""
    _check_inputs(x, y, margin, k)
    dev = _pick_device(device)
    if gemm not in ("auto", "numpy", "torch") or (gemm == "numpy" and dev.type != "cpu"):
        raise ValueError(f"gemm must be 'auto', 'torch', or 'numpy' (CPU only), got {gemm!r} on {dev}")
    xn, yn = _normalized(x), _normalized(y)
    use_numpy = gemm == "numpy" or (gemm == "auto" and dev.type == "cpu")
    y_dev = None if use_numpy else torch.from_numpy(yn).to(dev)
    if margin == "absolute" and use_numpy and _faiss() is not None:
        return _faiss_1nn(xn, yn)  # one direction only: faiss's own blocked GEMM + heap is LASER's path and no slower
    if margin == "absolute":
        cos_xy, idx_xy, _ = _scan(xn, yn, 1, 0, y_dev, block_bytes)
        return _best(cos_xy, idx_xy, None, None, margin)
    cos_xy, idx_xy, cos_yx = _scan(xn, yn, k, k, y_dev, block_bytes)
    return _best(cos_xy, idx_xy, cos_xy.mean(axis=1), cos_yx.mean(axis=1), margin)


# ---------------------------------------------------------------- error counting


def count_errors(best: np.ndarray, target_texts: list[str] | None = None) -> int:
    """Rows whose best candidate is not the aligned one: by index, or by target text as LASER's ``eval.py``
    does by default (a retrieved duplicate of the aligned sentence then counts as correct)."""
    n = best.shape[0]
    if target_texts is None:
        return int((best != np.arange(n)).sum())
    if len(target_texts) <= int(best.max()):
        raise ValueError(f"target_texts has {len(target_texts)} lines, fewer than the rows of y ({best.max() + 1}+)")
    texts = np.asarray(target_texts, dtype=object)
    return int((texts[best] != texts[:n]).sum())


def errtype_breakdown(best: np.ndarray, target_texts: list[str], augmented: dict[str, dict]) -> dict[str, int]:
    """xsim++ errors by transformation type (LASER's xsim.py with ``augmented_json``): a wrong retrieval of an
    augmented sentence made from the aligned one counts under its ``errtype``, any other error as ``Misaligned``."""
    report: dict[str, int] = {}
    for i, j in enumerate(best.tolist()):
        got, want = target_texts[j], target_texts[i]
        if got == want:
            continue
        entry = augmented.get(got.strip())
        kind = entry["errtype"] if entry is not None and entry["src"] == want.strip() else "Misaligned"
        report[kind] = report.get(kind, 0) + 1
    return dict(sorted(report.items()))


def xsim(
    x: np.ndarray,
    y: np.ndarray,
    margin: str = "ratio",
    k: int = 4,
    *,
    target_texts: list[str] | None = None,
    device: str | torch.device | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[int, int]:
    """xsim errors of x (n, d) against y (n + extra, d): ``(errors, n)``. Extra rows of y are hard negatives
    (xsim++). Inputs are not modified. ``target_texts`` (one line per row of y) switches to text comparison."""
    best = nearest(x, y, margin, k, device=device, block_bytes=block_bytes)
    return count_errors(best, target_texts), x.shape[0]


def xsim_ref(
    x: np.ndarray, y: np.ndarray, margin: str = "ratio", k: int = 4, *, target_texts: list[str] | None = None
) -> tuple[int, int]:
    """``xsim`` through the two-search + Python-loop reference (``nearest_ref``)."""
    return count_errors(nearest_ref(x, y, margin, k), target_texts), x.shape[0]
