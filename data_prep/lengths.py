"""Sampling files of a prepared split: compact, memory-mapped arrays that every rank of a node shares.

Written once per split under DIR/sampling/ (by data_prep at the end of a prep, or by the trainer on first use of a
dataset prepared before them):

    {split}_lengths.npy     uint16 (N, 2)  token counts (src, trg), clipped at 65535 (4 bytes per pair)
    {split}_pair_ids.npy    uint16 (N,)    language-pair code of each row (2 bytes per pair)
    {split}_pair_index.npy  uint32 (N,)    rows grouped by pair code, ascending inside a pair (uint64 past 2^32 rows)
    {split}.json            version, rows, pair names and row counts, the largest token id, the shards it was built
                            from ({file, size, sha256}), {file: {size, sha256}} of the arrays, and a digest of itself

At 10^9 pairs that is 4 + 2 + 4 GB on disk, held once per node in the page cache (np.load(mmap_mode="r")), instead
of 24 bytes per pair in every rank's heap. Built in Arrow record batches: memory stays at one batch plus the
per-pair counters, whatever N. The space is reserved (posix_fallocate) before any array is mapped, so a full disk is
an error naming the device, never a SIGBUS inside a mapped write; temporary files are removed on any failure.

The files are derived data, so they are checked against what they derive from before they are trusted
(`open_sampling_files`): the record's digest, its shards against the manifest's (content sha256), the arrays' sizes,
dtypes and shapes, counts that sum to the rows, and (`deep`) every pair code and index in range, the counts equal to
the codes' histogram, and a sample of rows compared with the shards themselves (lengths, pair names, token ids).
A file that fails raises LengthsError; the trainer rebuilds it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VERSION = 2
MAX_PAIRS = 1 << 16  # pair codes are uint16
SUFFIXES = ("lengths", "pair_ids", "pair_index")
SPOT_ROWS = 1024  # rows compared with the shards on a deep check (all of them below this)
CHUNK = 1 << 22  # rows per chunk of the range checks: 16 MiB of pair_index in memory at a time
HEADER_BYTES = 128  # an .npy header (numpy pads it to 64-byte multiples; 128 covers these shapes)


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


def digest(meta: dict) -> str:
    """sha256 of the record without its own "digest" (canonical JSON): an edited pair name or count is seen."""
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _shard_files(split_dir: Path) -> list[str]:
    state = json.loads((split_dir / "state.json").read_text())
    return [entry["filename"] for entry in state["_data_files"]]


def _record_batches(split_dir: Path):
    """Arrow record batches of every shard of a `save_to_disk` split, in row order (memory-mapped)."""
    for name in _shard_files(split_dir):
        with pa.memory_map(str(split_dir / name)) as source:
            yield from pa.ipc.open_stream(source)


def _table(split_dir: Path) -> pa.Table:
    """The split as one zero-copy table over the memory-mapped shards (for row look-ups by position)."""
    tables = []
    for name in _shard_files(split_dir):
        with pa.memory_map(str(split_dir / name)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables)


def _pair_names(batch) -> np.ndarray:
    src, trg = batch.column("src_lang"), batch.column("trg_lang")
    return pc.binary_join_element_wise(src, trg, "-").to_numpy(zero_copy_only=False)


def _max_id(batch) -> int:
    """The largest token id of a batch's src and trg lists (-1 when empty)."""
    out = -1
    for col in ("src_ids", "trg_ids"):
        m = pc.max(pc.list_flatten(batch.column(col))).as_py()
        out = max(out, -1 if m is None else int(m))
    return out


def shard_sources(data_dir: str | Path, split: str) -> list[dict]:
    """{file, size, sha256} of every shard of the split, as the manifest lists them (file relative to DIR)."""
    root = Path(data_dir)
    out = []
    for name in _shard_files(root / split):
        path = root / split / name
        out.append({"file": f"{split}/{name}", "size": path.stat().st_size, "sha256": _sha256(path)})
    return out


def _space_needed(n: int) -> int:
    index_bytes = 4 if n < 2**32 else 8
    return n * (4 + 2 + index_bytes) + 3 * HEADER_BYTES + (1 << 20)  # + the record and some slack


def _check_space(out: Path, n: int) -> None:
    need, free = _space_needed(n), shutil.disk_usage(out).free
    if free < need:
        raise LengthsError(
            f"{out}: no space left on the device: the sampling files of {n} rows need {need / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB free; free some space and relaunch"
        )


def _open_reserved(path: Path, dtype, shape) -> np.memmap:
    """A new .npy memory map whose blocks are reserved first: ENOSPC here, not SIGBUS on a mapped write."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return array


def write_sampling_files(data_dir: str | Path, split: str = "train") -> dict:
    """Scan DIR/split once, write the three arrays and the JSON record atomically (tmp names + os.replace).

    LengthsError (no file left behind) when the device has no room: checked before, and caught while writing."""
    root, split_dir = Path(data_dir), Path(data_dir) / split
    out = sampling_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    n = sum(b.num_rows for b in _record_batches(split_dir))
    _check_space(out, n)
    tag = f"{socket.gethostname()}.{os.getpid()}"  # nodes sharing a file system may build at the same time
    tmp = {s: out / f".{split}_{s}.tmp{tag}.npy" for s in SUFFIXES}
    tmp_meta = meta_path(root, split).with_name(f".{split}.json.tmp{tag}")
    try:
        return _write(root, split, n, tmp, tmp_meta)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LengthsError(f"{out}: no space left on the device while writing the sampling files ({e})") from e
        raise
    finally:
        for path in (*tmp.values(), tmp_meta):
            path.unlink(missing_ok=True)


def _write(root: Path, split: str, n: int, tmp: dict, tmp_meta: Path) -> dict:
    split_dir = root / split
    index_dtype = np.uint32 if n < 2**32 else np.uint64
    lengths = _open_reserved(tmp["lengths"], np.uint16, (n, 2))
    codes = _open_reserved(tmp["pair_ids"], np.uint16, (n,))
    index = _open_reserved(tmp["pair_index"], index_dtype, (n,))
    names: dict[str, int] = {}
    counts = np.zeros(MAX_PAIRS + 1, dtype=np.int64)  # per pair code, accumulated batch by batch
    start, max_id = 0, -1
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
        max_id = max(max_id, _max_id(batch))
        start = stop
    counts = counts[: len(names)]
    _write_index(index, codes, counts)
    for a in (lengths, codes, index):
        a.flush()
    del lengths, codes, index
    return _publish(root, split, tmp, tmp_meta, list(names), counts, max_id)


def _publish(root: Path, split: str, tmp: dict, tmp_meta: Path, pairs: list[str], counts, max_id: int,
             sources: list[dict] | None = None) -> dict:  # fmt: skip
    """Move the arrays into place, then write the record (last: its presence means the arrays are complete).
    `sources`: the shards' {file, size, sha256} when known; else each shard is hashed here."""
    files = {}
    for s in SUFFIXES:
        final = _file(root, split, s)
        os.replace(tmp[s], final)
        files[final.name] = {"size": final.stat().st_size, "sha256": _sha256(final)}
    n = int(np.asarray(counts).sum())
    meta = {"version": VERSION, "split": split, "rows": n, "pairs": pairs, "counts": np.asarray(counts).tolist()}
    meta.update(max_id=max_id, source=shard_sources(root, split) if sources is None else sources, files=files)
    meta["digest"] = digest(meta)
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, meta_path(root, split))
    return meta


def _write_index(index: np.ndarray, codes: np.ndarray, counts: np.ndarray, chunk: int = CHUNK) -> None:
    """Rows grouped by pair code (a counting sort, one chunk of codes in memory at a time)."""
    n = len(codes)
    cursor = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else np.zeros(0, np.int64)
    for start in range(0, n, chunk):
        block = np.asarray(codes[start : start + chunk])
        order = np.argsort(block, kind="stable")  # rows of a pair stay ascending
        sorted_codes = block[order]
        first = np.searchsorted(sorted_codes, sorted_codes, side="left")  # rank inside its pair within the chunk
        index[cursor[sorted_codes] + (np.arange(len(order)) - first)] = start + order
        cursor += np.bincount(block, minlength=len(counts))


# -- reading and checking ---------------------------------------------------------------------------------------------
def _read_meta(path: Path, split: str, expected_rows: int) -> dict:
    """The record, its fields typed and its digest matching, or LengthsError naming what is wrong."""
    if not path.is_file():
        raise LengthsError(f"{path}: missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LengthsError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise LengthsError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("version") != VERSION or meta.get("rows") != expected_rows or meta.get("split") != split:
        raise LengthsError(
            f"{path}: version {meta.get('version')} / split {meta.get('split')} / {meta.get('rows')} rows, expected "
            f"version {VERSION} / {split} / {expected_rows} rows (manifest)"
        )
    fields = {"pairs": list, "counts": list, "max_id": int, "source": list, "files": dict, "digest": str}
    bad = [k for k, t in fields.items() if not isinstance(meta.get(k), t) or isinstance(meta.get(k), bool)]
    if bad:
        raise LengthsError(f"{path}: field(s) {bad} missing or of the wrong type")
    if meta["digest"] != digest(meta):
        raise LengthsError(f"{path}: its digest does not match its content (edited after it was built)")
    pairs, counts = meta["pairs"], meta["counts"]
    if not all(isinstance(p, str) for p in pairs) or len(set(pairs)) != len(pairs) or len(pairs) != len(counts):
        raise LengthsError(f"{path}: 'pairs' must be {len(counts)} distinct names, one per count")
    if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != expected_rows:
        raise LengthsError(f"{path}: 'counts' must be integers >= 0 summing to the {expected_rows} rows")
    return meta


def _check_source(path: Path, meta: dict, shards: list[dict] | None) -> None:
    """The shards the files were built from are the manifest's (file names and content sha256)."""
    if shards is None:
        return
    built = [(s.get("file"), s.get("sha256")) for s in meta["source"] if isinstance(s, dict)]
    want = [(s["file"], s.get("sha256")) for s in shards]
    same = len(built) == len(want) and all(b[0] == w[0] and (w[1] is None or b[1] == w[1]) for b, w in zip(built, want))
    if not same:
        raise LengthsError(f"{path}: built from other shards than manifest.json lists (the split was prepared again)")


def _open_array(path: Path, meta: dict, meta_file: Path, verify: str, dtypes: tuple, shape: tuple) -> np.ndarray:
    rec = meta["files"].get(path.name)
    if not isinstance(rec, dict):
        raise LengthsError(f"{meta_file}: no record of {path.name}")
    if verify != "off" and (not path.is_file() or path.stat().st_size != rec.get("size")):
        raise LengthsError(f"{path}: missing or not {rec.get('size')} bytes as {meta_file} records")
    if verify == "sha256" and _sha256(path) != rec.get("sha256"):
        raise LengthsError(f"{path}: sha256 differs from {meta_file} (corrupted)")
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise LengthsError(f"{path}: unreadable ({e})") from e
    if array.dtype not in dtypes or array.shape != shape:
        raise LengthsError(f"{path}: {array.dtype} {array.shape}, expected {dtypes[0]} {shape}")
    return array


def open_sampling_files(
    data_dir: str | Path,
    split: str,
    expected_rows: int,
    verify: str = "size",
    shards: list[dict] | None = None,
    deep: bool = False,
) -> dict:
    """The split's arrays memory-mapped read-only + its record; LengthsError when missing, stale, corrupted or lying.

    verify: "sha256" (hash the arrays: ~1 s per GB), "size" (sizes and row count), "off". shards: the manifest's
    shards of the split ({file, sha256}), compared with the ones the files were built from. deep: also the O(N) range
    and histogram checks and the rows compared with the shards (`check_against_shards`), once per node."""
    path = meta_path(data_dir, split)
    meta = _read_meta(path, split, expected_rows)
    _check_source(path, meta, shards)
    n = expected_rows
    index_dtypes = (np.dtype(np.uint32), np.dtype(np.uint64))
    specs = {"lengths": ((np.dtype(np.uint16),), (n, 2)), "pair_ids": ((np.dtype(np.uint16),), (n,))}
    specs["pair_index"] = (index_dtypes, (n,))
    arrays = {s: _open_array(_file(data_dir, split, s), meta, path, verify, *specs[s]) for s in SUFFIXES}
    tables = {**arrays, "pairs": meta["pairs"], "counts": np.asarray(meta["counts"], dtype=np.int64), "meta": meta}
    if deep and verify != "off":
        check_against_shards(data_dir, split, tables)
    return tables


def check_against_shards(data_dir: str | Path, split: str, tables: dict) -> None:
    """Every pair code and index in range and the counts equal to the codes' histogram (chunked, O(N) reads), then
    up to SPOT_ROWS rows, and the index positions that point at them, compared with the shards."""
    codes, index, lengths = tables["pair_ids"], tables["pair_index"], tables["lengths"]
    counts, names, n = tables["counts"], tables["pairs"], len(tables["pair_ids"])
    seen = np.zeros(len(counts), dtype=np.int64)
    for start in range(0, n, CHUNK):
        block, rows = np.asarray(codes[start : start + CHUNK]), np.asarray(index[start : start + CHUNK])
        if len(block) and (int(block.max()) >= len(counts) or int(rows.max()) >= n):
            raise LengthsError(f"{sampling_dir(data_dir)}: {split} pair codes or pair_index values out of range")
        seen += np.bincount(block, minlength=len(counts))
    if not np.array_equal(seen, counts):
        raise LengthsError(f"{meta_path(data_dir, split)}: counts differ from the pair codes of {split}_pair_ids.npy")
    if n == 0:
        return
    pos = np.unique(np.linspace(0, n - 1, min(n, SPOT_ROWS)).astype(np.int64))
    group = np.searchsorted(np.cumsum(counts), pos, side="right")  # the pair whose index block holds position pos
    if not np.array_equal(np.asarray(codes[np.asarray(index[pos]).astype(np.int64)]), group):
        raise LengthsError(f"{_file(data_dir, split, 'pair_index')}: rows filed under the wrong language pair")
    rows = _table(Path(data_dir) / split).take(pa.array(pos))
    for j, col in enumerate(("src_ids", "trg_ids")):
        true = np.minimum(pc.list_value_length(rows.column(col)).to_numpy(zero_copy_only=False), 65535)
        if not np.array_equal(np.asarray(lengths[pos, j]), true):
            raise LengthsError(f"{_file(data_dir, split, 'lengths')}: token counts differ from the shards'")
    if [names[c] for c in np.asarray(codes[pos])] != list(_pair_names(rows)):
        raise LengthsError(f"{meta_path(data_dir, split)}: pair names differ from the shards' languages")
    if _max_id(rows) > tables["meta"]["max_id"]:
        raise LengthsError(f"{meta_path(data_dir, split)}: max_id is below the token ids of the shards")


# -- merging per-shard arrays (data_prep's parallel build) ------------------------------------------------------------
def merge_sampling_files(data_dir: str | Path, split: str, shards: list[dict]) -> dict:
    """The split's sampling files from per-shard arrays, in shard order: the same files `write_sampling_files`
    builds by scanning the rows, without a pass over the rows in one process.

    shards: per shard {"rows", "lengths": (n, 2) uint16 .npy, "codes": (n,) uint16 .npy (pair code in the shard's
    first-appearance order), "index": (n,) .npy (rows grouped by code, ascending), "pairs": names in code order,
    optional "max_id" (the largest token id), "file" (relative to DIR) and "sha256" (what its writer hashed)}; with
    them no shard is read again (the record's `max_id` and `source` come from these fields). Pair codes are
    renumbered by first appearance over the whole split, as a scan in row order numbers them. DIR/split/state.json
    must already list the shards (the record names them with their sha256)."""
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
    _check_space(out, n)
    tag = f"{socket.gethostname()}.{os.getpid()}"
    tmp = {s: out / f".{split}_{s}.tmp{tag}.npy" for s in SUFFIXES}
    tmp_meta = meta_path(root, split).with_name(f".{split}.json.tmp{tag}")
    try:
        return _merge(root, split, shards, names, n, tmp, tmp_meta)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LengthsError(f"{out}: no space left on the device while writing the sampling files ({e})") from e
        raise
    finally:
        for path in (*tmp.values(), tmp_meta):
            path.unlink(missing_ok=True)


def _merge(root: Path, split: str, shards: list[dict], names: dict[str, int], n: int, tmp: dict, tmp_meta: Path):
    lengths = _open_reserved(tmp["lengths"], np.uint16, (n, 2))
    codes = _open_reserved(tmp["pair_ids"], np.uint16, (n,))
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
    if all("max_id" in s for s in shards):
        max_id = max((int(s["max_id"]) for s in shards), default=-1)
    else:
        max_id = max((_max_id(b) for b in _record_batches(root / split)), default=-1)
    return _publish(root, split, tmp, tmp_meta, list(names), counts, max_id, _known_sources(root, split, shards))


def _known_sources(root: Path, split: str, shards: list[dict]) -> list[dict] | None:
    """The record's `source` from the shards' own sha256, when they name exactly the files state.json lists."""
    if not shards or not all("file" in s and "sha256" in s for s in shards):
        return None
    if [Path(s["file"]).name for s in shards] != _shard_files(root / split):
        return None
    return [{"file": f"{split}/{Path(s['file']).name}", "size": (root / s["file"]).stat().st_size,
             "sha256": s["sha256"]} for s in shards]  # fmt: skip


def _merge_index(path: Path, shards: list[dict], starts: list[int], names: dict[str, int], counts) -> None:
    """Rows grouped by global pair code: for each code, each shard's rows of that pair (+ the shard's first row)."""
    n = int(counts.sum())
    index = _open_reserved(path, np.uint32 if n < 2**32 else np.uint64, (n,))
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
