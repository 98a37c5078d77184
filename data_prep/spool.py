"""The spool: cleaned pairs streamed to one Arrow IPC file on disk, so later passes (tokenizer
training, parallel tokenisation) memory-map it instead of holding the corpus in RAM.

Each row carries a 64-bit key, blake2b-8 of `src \\0 trg`. Exact duplicates are found from the key
column alone (8 bytes a row: 5M pairs -> 40 MB), and the same key decides the held-out split, so a
pair and its duplicates always land on the same side and the split does not depend on input order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from .records import Pair

SCHEMA = pa.schema(
    [
        ("src", pa.string()),
        ("trg", pa.string()),
        ("src_lang", pa.string()),
        ("trg_lang", pa.string()),
        ("key", pa.uint64()),
        ("where", pa.string()),  # file:line, for skipped.jsonl's duplicate entries
    ]
)
DROP, TRAIN, VALID = -1, 0, 1


def pair_key(src: str, trg: str) -> int:
    digest = hashlib.blake2b(f"{src}\0{trg}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SpoolWriter:
    """Buffers `batch_rows` pairs, then appends them as one record batch to `path`."""

    def __init__(self, path: Path, batch_rows: int = 8192):
        self._writer = pa.ipc.new_file(str(path), SCHEMA)
        self._rows: list[tuple] = []
        self._batch_rows = batch_rows
        self._flushed = 0

    @property
    def rows(self) -> int:
        """Pairs added so far (flushed or buffered)."""
        return self._flushed + len(self._rows)

    def add(self, pair: Pair) -> None:
        self._rows.append((pair.src, pair.trg, pair.src_lang, pair.trg_lang, pair_key(pair.src, pair.trg), pair.where))
        if len(self._rows) >= self._batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_batch(pa.record_batch([list(col) for col in zip(*self._rows)], schema=SCHEMA))
            self._flushed += len(self._rows)
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def open_spool(path: Path) -> pa.Table:
    """The spool as a memory-mapped table (no copy into RAM)."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def assign_splits(keys: np.ndarray, valid_fraction: float, min_valid: int) -> np.ndarray:
    """int8 per row: DROP for repeats of an earlier row's key, else TRAIN or VALID.

    A pair is VALID when key < valid_fraction * 2**64 (a hash threshold: stable under added data);
    if that yields fewer than `min_valid` pairs, the unique pairs with the smallest keys are moved over.
    """
    splits = np.full(len(keys), DROP, dtype=np.int8)
    _, first = np.unique(keys, return_index=True)  # first occurrence of each key, in key order
    splits[first] = TRAIN
    threshold = np.uint64(min(int(valid_fraction * 2.0**64), 2**64 - 1))
    valid = first[keys[first] < threshold]
    if len(valid) < min_valid:
        valid = first[: min(min_valid, max(len(first) - 1, 0))]  # `first` is sorted by key; keep 1 train pair
    splits[valid] = VALID
    return splits


def duplicates(keys: np.ndarray, splits: np.ndarray, batch_rows: int = 1 << 16) -> Iterator[tuple[np.ndarray, ...]]:
    """(rows dropped as duplicates, the earlier row each repeats) in batches, in row order."""
    rows = np.flatnonzero(splits == DROP)
    if not len(rows):
        return
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    for start in range(0, len(rows), batch_rows):
        part = rows[start : start + batch_rows]
        yield part, first[inverse[part]]


def sample_mask(keys: np.ndarray, splits: np.ndarray, limit: int | None) -> np.ndarray:
    """Kept rows, thinned to about `limit` sentences (2 per pair) by a hash threshold.

    The threshold is on a remix of the key (times the 64-bit golden-ratio constant, mod 2**64), so the
    sample is uniform over languages and sources and not the same rows as the valid split (low keys).
    """
    kept = splits != DROP
    n_kept = int(kept.sum())
    if limit is None or 2 * n_kept <= limit:
        return kept
    mixed = keys * np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2**64
    threshold = np.uint64(int(limit / (2 * n_kept) * 2.0**64))
    return kept & (mixed < threshold)


def iter_texts(table: pa.Table, mask: np.ndarray, batch_rows: int = 8192) -> Iterator[str]:
    """src and trg of the rows where `mask` is true, in spool order."""
    for start in range(0, table.num_rows, batch_rows):
        chunk = table.slice(start, batch_rows)
        keep = mask[start : start + batch_rows]
        for src, trg, k in zip(chunk.column("src").to_pylist(), chunk.column("trg").to_pylist(), keep):
            if k:
                yield src
                yield trg
