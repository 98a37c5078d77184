"""Final layout of a prepared directory: `train/` and `valid/` as `datasets.save_to_disk` folders built
from the encoded chunks (memory-mapped, so peak RSS stays at one Arrow batch), the shard list, and
token-length statistics for the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

SHARD_BYTES = 500 * 2**20  # save_to_disk shard size: 5M pairs of ~30 tokens x 2 sides x 4 B -> a few shards


def features():
    import datasets

    return datasets.Features(
        {
            "src_ids": datasets.List(datasets.Value("int32")),
            "trg_ids": datasets.List(datasets.Value("int32")),
            "src_lang": datasets.Value("string"),
            "trg_lang": datasets.Value("string"),
        }
    )


def save_split(chunk_files: list[Path], out: Path, num_proc: int = 1) -> None:
    """Concatenate the chunk files (in order) into one dataset and `save_to_disk(out)`."""
    import datasets

    feats = features()
    parts = [datasets.Dataset.from_file(str(p)) for p in chunk_files]  # list<int32> -> List(Value("int32"))
    ds = (
        datasets.concatenate_datasets(parts)
        if parts
        else datasets.Dataset.from_dict({name: [] for name in feats}, features=feats)
    )
    if len(ds) == 0:  # max_shard_size on 0 rows writes no data file, and load_from_disk then fails
        ds.save_to_disk(str(out), num_shards=1)
    else:
        ds.save_to_disk(str(out), max_shard_size=SHARD_BYTES, num_proc=None if num_proc <= 1 else num_proc)


def shard_entries(root: Path, split: str) -> list[dict]:
    """One manifest entry per Arrow file of `root/split`: relative path, rows, sha256."""
    entries = []
    for path in sorted((root / split).glob("*.arrow")):
        with pa.memory_map(str(path)) as source:
            rows = pa.ipc.open_stream(source).read_all().num_rows
        entries.append(
            {"split": split, "file": path.relative_to(root).as_posix(), "rows": rows, "sha256": file_sha256(path)}
        )
    return entries


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
