"""A prepared dataset directory: manifest and shard checks, memory-mapped splits, rows, the sampling files.

A prepared dataset directory (contract 1): `train/`, `valid/` (`datasets.save_to_disk` output, memory-mapped by
`load_from_disk`), `tokenizer/`, `manifest.json` listing every Arrow shard with its rows and sha256.

Batching: pipeline/data/sampler.py (a lazily evaluated global plan of micro batches from (seed, epoch), the same rows
per optimizer step whatever the number of ranks; language-pair sampling with --lang-alpha); `sampling_tables` opens the
split's shared memory-mapped lengths and pair files (data_prep/lengths.py), building them on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)
SPLITS = ("train", "valid")
COLUMNS = ("src_ids", "trg_ids", "src_lang", "trg_lang")
REQUIRED_SPECIALS = ("bos", "pad", "eos", "unk", "mask")


class DataError(RuntimeError):
    """A prepared dataset that cannot be trained on; the message names the file or shard."""


# -- manifest and shards ---------------------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):  # 4 MiB reads: hashing runs at disk speed, memory stays flat
            h.update(block)
    return h.hexdigest()


def load_manifest(data_dir: str | Path) -> dict:
    """Read and sanity-check DIR/manifest.json (contract 1)."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; --data must be a data_prep output directory")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e}") from e
    tok = manifest.get("tokenizer", {})
    missing = [k for k in REQUIRED_SPECIALS if k not in tok.get("special_ids", {})]
    if missing or "vocab_size" not in tok:
        raise DataError(
            f"{path}: tokenizer.vocab_size / tokenizer.special_ids {list(REQUIRED_SPECIALS)} required; "
            f"missing {missing or ['vocab_size']}"
        )
    if not isinstance(manifest.get("shards"), list) or not manifest["shards"]:
        raise DataError(f"{path}: no 'shards' list")
    for i, shard in enumerate(manifest["shards"]):
        if not {"split", "file", "rows"} <= set(shard):
            raise DataError(f"{path}: shards[{i}] needs split, file, rows; has {sorted(shard)}")
    return manifest


def _arrow_rows(path: Path) -> int:
    """Rows in one `save_to_disk` shard (Arrow IPC stream), read memory-mapped without materialising columns."""
    with pa.memory_map(str(path)) as source:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(source))


def verify_shards(data_dir: str | Path, manifest: dict, mode: str = "sha256") -> None:
    """Every manifest shard exists inside its split folder with its rows (and sha256), every Arrow file on disk is in
    the manifest, and every file `load_from_disk` would open is a listed shard (`load_split`).

    mode: "sha256" (hash every shard: about 1 s per GB), "size" (row counts only), "off".
    Raises DataError naming the first bad shard, before anything trains.
    """
    if mode == "off":
        return
    root = Path(data_dir)
    listed = set()
    for shard in manifest["shards"]:
        path = root / shard["file"]
        listed.add(path.resolve())
        if not path.resolve().is_relative_to((root / shard["split"]).resolve()):
            raise DataError(
                f"shard {shard['file']} ({shard['split']}): resolves to {path.resolve()}, outside "
                f"{root / shard['split']}; re-run data_prep"
            )
        if not path.is_file():
            raise DataError(
                f"shard {shard['file']} ({shard['split']}): listed in {root / 'manifest.json'} but missing on disk"
            )
        try:
            rows = _arrow_rows(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"shard {path}: unreadable Arrow file ({e}); re-run data_prep") from e
        if rows != shard["rows"]:
            raise DataError(f"shard {path}: {rows} rows on disk, manifest says {shard['rows']}")
        if mode == "sha256" and shard.get("sha256") and sha256_file(path) != shard["sha256"]:
            raise DataError(
                f"shard {path}: sha256 differs from the manifest (corrupted or rewritten); re-run data_prep"
            )
    for split in SPLITS:
        for path in sorted((root / split).glob("*.arrow")):
            if path.resolve() not in listed:
                raise DataError(f"shard {path}: on disk but not in {root / 'manifest.json'} (manifest out of date)")
        if (root / split).is_dir():
            load_split(root, split, manifest)  # the files its state.json names are the listed ones


def load_split(data_dir: str | Path, split: str, manifest: dict | None = None) -> datasets.Dataset:
    """Memory-mapped split; its row count must match the manifest's shards.

    Every file `load_from_disk` opens (the `_data_files` of SPLIT/state.json) must resolve inside SPLIT/ and, given a
    manifest, be one of its shards of this split: a state.json naming other Arrow files would train on unverified rows.
    """
    path = Path(data_dir) / split
    if not path.is_dir():
        raise DataError(f"{path}: split directory missing")
    state = path / "state.json"
    try:
        names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{state}: unreadable ({type(e).__name__}: {e}); re-run data_prep") from e
    shards = (
        None
        if manifest is None
        else {(Path(data_dir) / s["file"]).resolve() for s in manifest["shards"] if s["split"] == split}
    )
    for name in names:
        file = (path / name).resolve()
        if not file.is_relative_to(path.resolve()):
            raise DataError(f"{state}: data file {name!r} resolves to {file}, outside {path}; re-run data_prep")
        if shards is not None and file not in shards:
            raise DataError(f"{state}: data file {name!r} is not a {split!r} shard in manifest.json; re-run data_prep")
    try:
        ds = datasets.Dataset.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises several types for a broken dir
        raise DataError(f"{path}: cannot load with datasets.load_from_disk: {e}") from e
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: columns {missing} missing; has {ds.column_names}")
    if manifest is not None:
        expected = sum(s["rows"] for s in manifest["shards"] if s["split"] == split)
        if len(ds) != expected:
            raise DataError(f"{path}: {len(ds)} rows, manifest shards of split {split!r} say {expected}")
        if split != "train":  # train's largest id is in its sampling record (`sampling_tables`); the others are small
            _check_ids(path, _max_id(ds), manifest)
    return ds


def _max_id(ds: datasets.Dataset) -> int:
    """The largest token id of a split, computed in Arrow (-1 when empty)."""
    table = ds.with_format("arrow")[:] if len(ds) else None
    if table is None:
        return -1
    found = [pc.max(pc.list_flatten(table.column(c))).as_py() for c in ("src_ids", "trg_ids")]
    return max([-1] + [int(m) for m in found if m is not None])


def pair_lengths(ds: datasets.Dataset, max_length: int) -> np.ndarray:
    """(N, 2) int64 token counts (src, trg) after truncation to max_length, computed in Arrow (no Python loop)."""
    table = ds.with_format("arrow")[:] if len(ds) else None
    if table is None:
        return np.zeros((0, 2), dtype=np.int64)
    cols = [pc.list_value_length(table.column(c)).to_numpy(zero_copy_only=False) for c in ("src_ids", "trg_ids")]
    return np.minimum(np.stack(cols, axis=1).astype(np.int64), max_length)


def fetch_rows(ds: datasets.Dataset, indices, max_length: int) -> list[dict]:
    """Rows at `indices` as dicts of python lists, each side cut to max_length keeping its final </s>."""
    cols = ds[[int(i) for i in indices]]
    rows = []
    for src, trg in zip(cols["src_ids"], cols["trg_ids"]):
        rows.append({"src_ids": _truncate(src, max_length), "trg_ids": _truncate(trg, max_length)})
    return rows


def _truncate(ids: list[int], max_length: int) -> list[int]:
    return ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:]


# -- batching ----------------------------------------------------------------------------------------------------
def sampling_tables(data_dir: str | Path, split: str, manifest: dict, verify: str = "size", rank: int = 0) -> dict:
    """The split's shared, memory-mapped sampling files (data_prep/lengths.py): lengths (N, 2) uint16, pair_ids,
    pair_index, pairs, counts. Derived files are checked against the manifest's shards before they are trusted: local
    rank 0 of every node runs the full check (`open_sampling_files(deep=True)`: record digest, source shards, ranges,
    histogram, a sample of rows against the shards) and rebuilds the files when it fails or they are missing (logged;
    --data may be a node-local copy); the other ranks wait for every node's verdict. The largest token id must lie
    below the manifest's vocab_size. `rank` is unused (kept for callers)."""
    from data_prep import lengths as L
    from runtime import collectives

    shards = [s for s in manifest["shards"] if s["split"] == split]
    rows = sum(s["rows"] for s in shards)

    def ensure() -> None:
        try:
            L.open_sampling_files(data_dir, split, rows, verify, shards, deep=True)
        except (L.LengthsError, OSError, ValueError) as e:
            log.info("building %s for split %s (%s); once per dataset", L.sampling_dir(data_dir), split, e)
            error = _build_sampling(data_dir, split)
            if error is not None:
                raise DataError(error) from e
            try:
                L.open_sampling_files(data_dir, split, rows, verify, shards, deep=True)
            except (L.LengthsError, OSError, ValueError) as again:
                raise DataError(
                    f"{again}; the files were rebuilt from {Path(data_dir) / split} and still differ: re-run data_prep"
                ) from again

    collectives.on_each_node(ensure, (DataError,))
    try:
        tables = L.open_sampling_files(data_dir, split, rows, verify, shards)
    except (L.LengthsError, OSError, ValueError) as e:
        raise DataError(f"{e}; re-run data_prep or delete {L.sampling_dir(data_dir)}") from e
    _check_ids(Path(data_dir) / split, tables["meta"]["max_id"], manifest)
    return tables


def _check_ids(where: Path, max_id: int, manifest: dict) -> None:
    vocab = int(manifest["tokenizer"]["vocab_size"])
    if max_id >= vocab:
        raise DataError(
            f"{where}: token id {max_id} in the shards, but manifest.json's tokenizer.vocab_size is {vocab}: the "
            "manifest does not describe these shards' tokenizer; re-run data_prep"
        )


def _build_sampling(data_dir: str | Path, split: str) -> str | None:
    from data_prep import lengths as L

    t0 = time.time()
    try:
        meta = L.write_sampling_files(data_dir, split)
    except (L.LengthsError, OSError) as e:
        return f"cannot build the sampling files of {Path(data_dir) / split} in {L.sampling_dir(data_dir)}: {e}"
    n_pairs, dt = len(meta["pairs"]), time.time() - t0
    log.info("wrote %s: %d rows, %d language pairs in %.1f s", L.meta_path(data_dir, split), meta["rows"], n_pairs, dt)
    return None


def special_ids(manifest: dict) -> dict:
    """The manifest's special ids as ints (bos, pad, eos, unk, mask)."""
    return {k: int(v) for k, v in manifest["tokenizer"]["special_ids"].items()}
