"""Sampling files of a prepared split: compact, memory-mapped arrays that every rank of a node shares.

Written once per split under DIR/sampling/ (by data_prep at the end of a prep, or by the trainer on first use of a
dataset prepared before them):

    {split}_lengths.npy     uint16 (N, 2)  token counts (src, trg), clipped at 65535 (4 bytes per pair)
    {split}_pair_ids.npy    uint16 (N,)    language-pair code of each row (2 bytes per pair)
    {split}_pair_index.npy  uint32 (N,)    rows grouped by pair code, ascending inside a pair (uint64 past 2^32 rows)
    {split}.json            version, rows, pair names and row counts, {file: {size, sha256}}

At 10^9 pairs that is 4 + 2 + 4 GB on disk, held once per node in the page cache (np.load(mmap_mode="r")), instead
of 24 bytes per pair in every rank's heap. Built in Arrow record batches: memory stays at one batch plus the
per-pair counters, whatever N.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VERSION = 1
MAX_PAIRS = 1 << 16  # pair codes are uint16
SUFFIXES = ("lengths", "pair_ids", "pair_index")


class LengthsError(RuntimeError):
    """A sampling file that does not match its split; the message names the file and what to re-run."""


def sampling_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "sampling"


def meta_path(data_dir: str | Path, split: str) -> Path:
    return sampling_dir(data_dir) / f"{split}.json"


def _file(data_dir, split: str, suffix: str) -> Path:
    return sampling_dir(data_dir) / f"{split}_{suffix}.npy"


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _record_batches(split_dir: Path):
    """Arrow record batches of every shard of a `save_to_disk` split, in row order (memory-mapped)."""
    state = json.loads((split_dir / "state.json").read_text())
    for entry in state["_data_files"]:
        with pa.memory_map(str(split_dir / entry["filename"])) as source:
            yield from pa.ipc.open_stream(source)


def _pair_names(batch: pa.RecordBatch) -> np.ndarray:
    src, trg = batch.column("src_lang"), batch.column("trg_lang")
    return pc.binary_join_element_wise(src, trg, "-").to_numpy(zero_copy_only=False)


def write_sampling_files(data_dir: str | Path, split: str = "train") -> dict:
    """Scan DIR/split once, write the three arrays and the JSON record atomically (tmp names + os.replace)."""
    root, split_dir = Path(data_dir), Path(data_dir) / split
    out = sampling_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    n = sum(b.num_rows for b in _record_batches(split_dir))
    tag = f"{socket.gethostname()}.{os.getpid()}"  # nodes sharing a file system may build at the same time
    tmp = {s: out / f".{split}_{s}.tmp{tag}.npy" for s in SUFFIXES}
    lengths = np.lib.format.open_memmap(tmp["lengths"], mode="w+", dtype=np.uint16, shape=(n, 2))
    codes = np.lib.format.open_memmap(tmp["pair_ids"], mode="w+", dtype=np.uint16, shape=(n,))
    names: dict[str, int] = {}
    counts = np.zeros(MAX_PAIRS + 1, dtype=np.int64)  # per pair code, accumulated batch by batch
    start = 0
    for batch in _record_batches(split_dir):
        stop = start + batch.num_rows
        for j, col in enumerate(("src_ids", "trg_ids")):
            lens = pc.list_value_length(batch.column(col)).to_numpy(zero_copy_only=False)
            lengths[start:stop, j] = np.minimum(lens, 65535)
        uniq, inv = np.unique(_pair_names(batch), return_inverse=True)
        mapped = np.array([names.setdefault(str(u), len(names)) for u in uniq], dtype=np.int64)
        if len(names) > MAX_PAIRS:
            raise LengthsError(f"{split_dir}: more than {MAX_PAIRS} language pairs; pair codes are uint16")
        codes[start:stop] = mapped[inv]
        counts[: len(names)] += np.bincount(mapped[inv], minlength=len(names))
        start = stop
    counts = counts[: len(names)]
    _write_index(tmp["pair_index"], codes, counts)
    lengths.flush(), codes.flush()
    del lengths, codes
    files = {}
    for s in SUFFIXES:
        final = _file(root, split, s)
        os.replace(tmp[s], final)
        files[final.name] = {"size": final.stat().st_size, "sha256": _sha256(final)}
    meta = {"version": VERSION, "split": split, "rows": n, "pairs": list(names), "counts": counts.tolist()}
    meta["files"] = files
    path = meta_path(root, split)
    tmp_meta = path.with_name(f".{path.name}.tmp{tag}")
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, path)  # written last: its presence means the arrays are complete
    return meta


def _write_index(path: Path, codes: np.ndarray, counts: np.ndarray, chunk: int = 1 << 22) -> None:
    """Rows grouped by pair code (a counting sort, one chunk of codes in memory at a time)."""
    n = len(codes)
    dtype = np.uint32 if n < 2**32 else np.uint64
    index = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n,))
    cursor = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else np.zeros(0, np.int64)
    for start in range(0, n, chunk):
        block = np.asarray(codes[start : start + chunk])
        order = np.argsort(block, kind="stable")  # rows of a pair stay ascending
        sorted_codes = block[order]
        first = np.searchsorted(sorted_codes, sorted_codes, side="left")  # rank inside its pair within the chunk
        index[cursor[sorted_codes] + (np.arange(len(order)) - first)] = start + order
        cursor += np.bincount(block, minlength=len(counts))
    index.flush()
    del index


def open_sampling_files(data_dir: str | Path, split: str, expected_rows: int, verify: str = "size") -> dict:
    """The split's arrays memory-mapped read-only + its record; LengthsError when missing, stale or corrupted.

    verify: "sha256" (hash the arrays: ~1 s per GB), "size" (sizes and row count), "off"."""
    path = meta_path(data_dir, split)
    if not path.is_file():
        raise LengthsError(f"{path}: missing")
    meta = json.loads(path.read_text())
    if meta.get("version") != VERSION or meta.get("rows") != expected_rows:
        raise LengthsError(
            f"{path}: version {meta.get('version')} / {meta.get('rows')} rows, expected version {VERSION} / "
            f"{expected_rows} rows (manifest); delete {sampling_dir(data_dir)} to rebuild it"
        )
    arrays = {}
    for s in SUFFIXES:
        f = _file(data_dir, split, s)
        rec = meta["files"].get(f.name, {})
        if verify != "off" and (not f.is_file() or f.stat().st_size != rec.get("size")):
            raise LengthsError(f"{f}: missing or not {rec.get('size')} bytes as {path} records; delete it to rebuild")
        if verify == "sha256" and _sha256(f) != rec.get("sha256"):
            raise LengthsError(f"{f}: sha256 differs from {path} (corrupted); delete it to rebuild")
        arrays[s] = np.load(f, mmap_mode="r")
    return {**arrays, "pairs": meta["pairs"], "counts": np.asarray(meta["counts"], dtype=np.int64), "meta": meta}


def merge_sampling_files(data_dir: str | Path, split: str, shards: list[dict]) -> dict:
    """The split's sampling files from per-shard arrays, in shard order; the same files `write_sampling_files`
    builds by scanning the rows, without reading a shard.

    shards: per shard {"rows", "lengths": (n, 2) uint16 .npy, "codes": (n,) uint16 .npy (pair code in the shard's
    first-appearance order), "index": (n,) .npy (rows grouped by code, ascending), "pairs": names in code order}.
    Pair codes are renumbered by first appearance over the whole split, as a scan in row order numbers them."""
    root = Path(data_dir)
    out = sampling_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    names: dict[str, int] = {}
    for shard in shards:
        for name in shard["pairs"]:
            names.setdefault(name, len(names))
    if len(names) > MAX_PAIRS:
        raise LengthsError(f"{root / split}: more than {MAX_PAIRS} language pairs; pair codes are uint16")
    n = sum(s["rows"] for s in shards)
    tag = f"{socket.gethostname()}.{os.getpid()}"
    tmp = {s: out / f".{split}_{s}.tmp{tag}.npy" for s in SUFFIXES}
    lengths = np.lib.format.open_memmap(tmp["lengths"], mode="w+", dtype=np.uint16, shape=(n, 2))
    codes = np.lib.format.open_memmap(tmp["pair_ids"], mode="w+", dtype=np.uint16, shape=(n,))
    counts = np.zeros(len(names), dtype=np.int64)
    starts, at = [], 0
    for shard in shards:
        to_global = np.array([names[p] for p in shard["pairs"]], dtype=np.uint16)
        local = np.load(shard["codes"], mmap_mode="r")
        lengths[at : at + shard["rows"]] = np.load(shard["lengths"], mmap_mode="r")
        codes[at : at + shard["rows"]] = to_global[local]
        counts[to_global] += np.bincount(local, minlength=len(to_global))
        starts.append(at)
        at += shard["rows"]
    _merge_index(tmp["pair_index"], shards, starts, names, counts)
    lengths.flush(), codes.flush()
    del lengths, codes
    return _publish(root, split, tmp, tag, {"version": VERSION, "split": split, "rows": n, "pairs": list(names),
                                            "counts": counts.tolist()})  # fmt: skip


def _merge_index(path: Path, shards: list[dict], starts: list[int], names: dict[str, int], counts) -> None:
    """Rows grouped by global pair code: for each code, each shard's rows of that pair (+ the shard's first row)."""
    n = int(counts.sum())
    index = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint32 if n < 2**32 else np.uint64, shape=(n,))
    segments, local = [], [np.load(s["index"], mmap_mode="r") for s in shards]
    for shard in shards:  # per shard: {global code: (begin, end) in its local index}
        local_counts = np.bincount(np.load(shard["codes"], mmap_mode="r"), minlength=len(shard["pairs"]))
        ends = np.cumsum(local_counts)
        segments.append({names[p]: (int(e - c), int(e)) for p, c, e in zip(shard["pairs"], local_counts, ends)})
    at = 0
    for code in range(len(names)):
        for rows, start, seg in zip(local, starts, segments):
            if code in seg:
                b, e = seg[code]
                index[at : at + e - b] = rows[b:e].astype(index.dtype) + start
                at += e - b
    index.flush()
    del index


def _publish(root: Path, split: str, tmp: dict, tag: str, meta: dict) -> dict:
    """Move the arrays into place, then the JSON record (written last: its presence means the arrays are whole)."""
    files = {}
    for s in SUFFIXES:
        final = _file(root, split, s)
        os.replace(tmp[s], final)
        files[final.name] = {"size": final.stat().st_size, "sha256": _sha256(final)}
    meta["files"] = files
    path = meta_path(root, split)
    tmp_meta = path.with_name(f".{path.name}.tmp{tag}")
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, path)
    return meta
