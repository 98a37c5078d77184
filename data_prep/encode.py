"""Parallel tokenisation of the spool into Arrow chunks, one task per `chunk_rows` spool rows.

Each worker process builds the tokenizer from the same `tokenizers` JSON the HF tokenizer uses,
memory-maps the spool and the split array, and writes `train-NNNNNN.arrow` / `valid-NNNNNN.arrow`
(Arrow IPC stream, the format `datasets.Dataset.from_file` reads). Tasks are consumed in order
(`imap`), so the output order does not depend on the number of workers. Workers run
`encode_batch_fast` single-threaded (TOKENIZERS_PARALLELISM=false): parallelism is by process.

Ids: `<s>` + at most `max_tokens - 2` ids + `</s>`, int32 (XLM-R's template, truncation counted).
This module imports no torch / datasets / transformers, so spawned workers start in well under a second.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from .spool import TRAIN, VALID, open_spool

OUT_SCHEMA = pa.schema(
    [
        ("src_ids", pa.list_(pa.int32())),
        ("trg_ids", pa.list_(pa.int32())),
        ("src_lang", pa.string()),
        ("trg_lang", pa.string()),
    ]
)
SPLIT_NAMES = {TRAIN: "train", VALID: "valid"}
_STATE: dict = {}


@dataclass
class EncodeJob:
    """Everything a worker needs; picklable, sent once per worker through the pool initialiser."""

    tokenizer_json: str
    spool_path: Path
    splits_path: Path
    out_dir: Path
    max_tokens: int
    bos: int
    eos: int


@dataclass
class ChunkStats:
    """Per-chunk results, merged in order by the parent."""

    index: int
    rows: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    length_hist: dict[str, np.ndarray] = field(default_factory=dict)  # side -> counts of lengths 0..max_tokens


def _init(job: EncodeJob) -> None:
    from tokenizers import Tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _STATE.update(
        job=job,
        tok=Tokenizer.from_str(job.tokenizer_json),
        table=open_spool(job.spool_path),
        splits=np.load(job.splits_path, mmap_mode="r"),
    )


def _ids_array(texts: list[str], side: str, stats: ChunkStats) -> pa.ListArray:
    """Encode and wrap: (n,) list<int32> with `<s>`/`</s>`; truncations and lengths go to `stats`."""
    job, body = _STATE["job"], _STATE["job"].max_tokens - 2
    encodings = _STATE["tok"].encode_batch_fast(texts, add_special_tokens=False)
    flat: list[int] = []
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    truncated = 0
    for i, enc in enumerate(encodings):
        ids = enc.ids
        truncated += len(ids) > body
        flat.append(job.bos)
        flat.extend(ids[:body])
        flat.append(job.eos)
        offsets[i + 1] = len(flat)
    stats.truncated[side] = stats.truncated.get(side, 0) + truncated
    hist = np.bincount(np.diff(offsets), minlength=job.max_tokens + 1)
    stats.length_hist[side] = stats.length_hist.get(side, 0) + hist
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(flat, dtype=np.int32)))


def encode_chunk(task: tuple[int, int, int]) -> ChunkStats:
    """Tokenise spool rows [start, stop) and write one Arrow file per split that has rows."""
    index, start, stop = task
    job, stats = _STATE["job"], ChunkStats(index)
    rows = _STATE["table"].slice(start, stop - start)
    splits = np.asarray(_STATE["splits"][start:stop])
    for code, name in SPLIT_NAMES.items():
        take = np.flatnonzero(splits == code)
        stats.rows[name] = len(take)
        if not len(take):
            continue
        part = rows.take(pa.array(take))
        columns = [_ids_array(part.column(side).to_pylist(), side, stats) for side in ("src", "trg")]
        table = pa.Table.from_arrays([*columns, part.column("src_lang"), part.column("trg_lang")], schema=OUT_SCHEMA)
        with pa.OSFile(str(chunk_path(job.out_dir, name, index)), "wb") as sink:
            with pa.ipc.new_stream(sink, OUT_SCHEMA) as writer:
                writer.write_table(table)
    return stats


def chunk_path(out_dir: Path, split: str, index: int) -> Path:
    return out_dir / f"{split}-{index:06d}.arrow"


def encode_spool(
    job: EncodeJob, n_rows: int, chunk_rows: int, workers: int, on_chunk: Callable[[ChunkStats], None] | None = None
) -> list[ChunkStats]:
    """Run all chunks on `workers` processes (in-process for 1) and return their stats in order."""
    tasks = [(i, start, min(start + chunk_rows, n_rows)) for i, start in enumerate(range(0, n_rows, chunk_rows))]
    results = []
    for stats in _run(job, tasks, workers):
        results.append(stats)
        if on_chunk:
            on_chunk(stats)
    return results


def _run(job: EncodeJob, tasks: list[tuple[int, int, int]], workers: int) -> Iterator[ChunkStats]:
    if workers <= 1 or len(tasks) <= 1:
        _init(job)
        try:
            yield from map(encode_chunk, tasks)
        finally:
            _STATE.clear()
        return
    ctx = mp.get_context("spawn")  # no fork after the tokenizer trainer's thread pool has run
    with ctx.Pool(min(workers, len(tasks)), initializer=_init, initargs=(job,)) as pool:
        yield from pool.imap(encode_chunk, tasks)
