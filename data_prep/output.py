"""Small helpers of the output: file hashes and token-length statistics for the manifest (the shards themselves are
written by data_prep/stages/encode.py, their folders by stages/merge.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def file_sha256(path: Path, block: int = 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def length_stats(hist: np.ndarray) -> dict:
    """Token-length summary (with `<s>`/`</s>`) from a histogram of lengths 0..max_tokens."""
    n = int(hist.sum())
    if n == 0:
        return {"n": 0}
    lengths = np.arange(len(hist))
    cdf = np.cumsum(hist)
    pct = {f"p{q}": int(np.searchsorted(cdf, q / 100 * n)) for q in (50, 90, 99)}
    return {
        "n": n,
        "mean": round(float((lengths * hist).sum() / n), 3),
        **pct,
        "min": int(lengths[hist > 0][0]),
        "max": int(lengths[hist > 0][-1]),
    }
