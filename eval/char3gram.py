"""``char3gram``: a bag of hashed character 3-grams, the untrained baseline reported beside a trained encoder.

sentence -> NFKC + casefold, whitespace collapsed, one space of padding each side -> every character 3-gram ->
a 64-bit hash (splitmix64 of the three code points) -> one of 2^18 buckets -> sublinear term frequency
1 + ln(count) -> a fixed sparse random projection to ``dim`` dimensions (each bucket adds its weight with a
hashed sign to ``NNZ`` hashed dimensions, scaled by 1/sqrt(NNZ): Achlioptas-style, inner products kept in
expectation, no 2^18 x dim matrix stored). Deterministic across processes and machines (no Python ``hash``).
"""

from __future__ import annotations

import unicodedata

import numpy as np

BUCKETS = 2**18
NNZ = 2  # dimensions each bucket is spread over
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finaliser constants


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wraps modulo 2^64 by design)."""
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


def normalize(sentence: str) -> str:
    return " " + " ".join(unicodedata.normalize("NFKC", sentence).casefold().split()) + " "


def gram_buckets(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sentence row, bucket) of every character 3-gram, two int64 arrays of equal length."""
    texts = [normalize(s) for s in sentences]
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    row_of = np.repeat(np.arange(len(texts)), lengths)
    pos = np.arange(codes.size) - starts[row_of]
    valid = np.flatnonzero(pos + 2 < lengths[row_of])  # 3-grams that stay inside their sentence
    h = _mix(codes[valid] * np.uint64(3) + np.uint64(1))
    h = _mix(h ^ codes[valid + 1])
    h = _mix(h ^ codes[valid + 2])
    return row_of[valid], (h % np.uint64(BUCKETS)).astype(np.int64)


class Char3gramEncoder:
    """Encoder interface of ``eval.encode``: ``encode(sentences) -> (n, dim) float32``."""

    name = "char3gram"

    def __init__(self, dim: int = 1024, seed: int = 0):
        if dim < 1:
            raise ValueError(f"char3gram dim must be positive, got {dim}")
        self.dim = dim
        # The projection: bucket b adds sign[b, j] / sqrt(NNZ) to dimension dims[b, j], j < NNZ.
        keys = np.arange(BUCKETS, dtype=np.uint64)[:, None] * np.uint64(NNZ) + np.arange(NNZ, dtype=np.uint64)
        h = _mix(keys ^ _mix(np.full(1, seed, dtype=np.uint64)))
        self._dims = (h % np.uint64(dim)).astype(np.int64)  # (BUCKETS, NNZ)
        self._signs = np.where(h >> np.uint64(63), -1.0, 1.0) / np.sqrt(NNZ)

    def encode(self, sentences: list[str], desc: str | None = None, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(sentences), self.dim), dtype=np.float32)
        for r0 in range(0, len(sentences), 4096):  # bounds the (rows x dim) scatter buffer
            out[r0 : r0 + 4096] = self._encode_chunk(sentences[r0 : r0 + 4096])
        return out

    def _encode_chunk(self, sentences: list[str]) -> np.ndarray:
        rows, buckets = gram_buckets(sentences)
        pairs, counts = np.unique(rows * BUCKETS + buckets, return_counts=True)
        rows, buckets = pairs // BUCKETS, pairs % BUCKETS
        weight = 1.0 + np.log(counts)  # sublinear term frequency
        flat = rows[:, None] * self.dim + self._dims[buckets]  # (grams, NNZ)
        values = weight[:, None] * self._signs[buckets]
        dense = np.bincount(flat.ravel(), values.ravel(), minlength=len(sentences) * self.dim)
        return dense.reshape(len(sentences), self.dim).astype(np.float32)
