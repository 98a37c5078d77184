"""Inputs and outputs of ``python -m eval.mine``: text sides (plain or compressed), LASER's raw embedding files,
and the ``score <tab> src <tab> trg`` output.

A text side is read as LASER's ``TextLoadUnify`` reads it: ``inds`` maps every line to a row of the embeddings and
``sents`` holds the sentences of those rows. With ``unify`` the rows are the distinct lines in order of first
appearance; without it every line is its own row. (LASER's script numbers lines by distinct text even without
``--unify``, so its ``score`` and ``search`` modes read the wrong rows of a file with repeated lines; here line i
is row i.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class MineError(ValueError):
    """Bad input for mining; the message names the file or the flag."""


@dataclass
class Side:
    """One text side: ``inds[line] -> row`` and the sentence of each row."""

    path: str
    inds: np.ndarray
    sents: list[str]

    @property
    def lines(self) -> int:
        return int(self.inds.shape[0])


def read_side(path: str | Path, unify: bool) -> Side:
    """A text file (plain, gzip, xz or zstd, as data_prep reads them), one sentence per line."""
    from data_prep.records import SourceError
    from data_prep.textio import raw_lines

    path = Path(path)
    if not path.is_file():
        raise MineError(f"{path}: no such file")
    sent2ind: dict[str, int] = {}
    inds, sents = [], []
    try:
        for number, raw in raw_lines(path):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise MineError(f"{path}:{number}: not valid UTF-8 ({err})") from None
            if unify:
                row = sent2ind.setdefault(line, len(sent2ind))
                if row == len(sents):
                    sents.append(line)
            else:
                row = len(sents)
                sents.append(line)
            inds.append(row)
    except SourceError as err:
        raise MineError(str(err)) from None
    if not inds:
        raise MineError(f"{path}: empty file")
    return Side(str(path), np.asarray(inds, dtype=np.int64), sents)


def load_embeddings(path: str | Path, dim: int, fp16: bool, flag: str) -> np.ndarray:
    """LASER's embedding file (raw float32 or float16 rows of ``dim`` values, no header), memory-mapped."""
    path = Path(path)
    dtype = np.dtype(np.float16 if fp16 else np.float32)
    if not path.is_file():
        raise MineError(f"{flag} {path}: no such file")
    size = path.stat().st_size
    if size == 0 or size % (dim * dtype.itemsize):
        raise MineError(
            f"{flag} {path}: {size} bytes is not a whole number of {dim}-dim {dtype.name} rows (check --dim and --fp16)"
        )
    return np.memmap(path, mode="r", dtype=dtype, shape=(size // (dim * dtype.itemsize), dim))


class RowView:
    """Rows ``rows`` of a (memory-mapped) array, read only when sliced: the unified side of a large file without
    a copy of it. Supports ``shape``, ``view[a:b]`` and ``view[index_array]``."""

    def __init__(self, base: np.ndarray, rows: np.ndarray):
        self.base, self.rows = base, rows
        self.shape = (rows.shape[0], base.shape[1])

    def __getitem__(self, key) -> np.ndarray:
        return self.base[self.rows[key]]


def unique_rows(emb: np.ndarray, side: Side, flag: str, unify: bool):
    """The embedding rows of ``side``'s rows: one per line, or with ``unify`` the row of each distinct sentence's
    last line (as LASER's ``unique_embeddings`` takes it), as a ``RowView``."""
    if emb.shape[0] != side.lines:
        raise MineError(f"{flag}: {emb.shape[0]} embeddings but {side.path} has {side.lines} lines")
    if not unify:
        return emb
    last = np.zeros(len(side.sents), dtype=np.int64)
    last[side.inds] = np.arange(side.lines)  # later lines overwrite earlier ones
    return RowView(emb, last)


def file_key(path: str | Path, unify: bool) -> str:
    """Identity of an embedding file for cached indexes: path, size, modification time, and the unification."""
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}:{unify}"


def write_pairs(path: str | Path, scores: np.ndarray, src: list[str], trg: list[str], scalar) -> int:
    """``score <tab> src <tab> trg`` lines; ``scalar`` formats a score as LASER prints it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        for s, a, b in zip(scores.tolist(), src, trg, strict=True):
            f.write(f"{scalar(s)}\t{a}\t{b}\n")
    os.replace(tmp, path)
    return len(src)


def write_lines(path: str | Path, lines: list[str]) -> int:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.writelines(f"{line}\n" for line in lines)
    os.replace(tmp, path)
    return len(lines)


def as_float64(value: float) -> str:
    """A float32 score as LASER's ``mine`` mode prints it: stored in a float64 array, printed with repr."""
    return str(np.float64(value))


def as_float32(value: float) -> str:
    """A float32 score as LASER's ``score`` mode prints it: numpy's shortest float32 repr."""
    return str(np.float32(value))


def write_summary(path: str | Path, summary: dict) -> None:
    Path(path).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
