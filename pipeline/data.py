"""Prepared dataset -> per-rank batches of rows: manifest/shard checks, a deterministic distributed batch sampler.

A prepared dataset directory (contract 1): `train/`, `valid/` (`datasets.save_to_disk` output, memory-mapped by
`load_from_disk`), `tokenizer/`, `manifest.json` listing every Arrow shard with its rows and sha256.

Batching: one epoch's plan is a list of global batches (row indices) drawn from (seed, epoch) only; rank r takes
batches r, r + W, r + 2W, ... cut to the same count on every rank (ranks must step in lockstep). The sampler's
position is (epoch, index into this rank's list), so a resumed run recomputes the plan and continues exactly.
Two modes: fixed pairs per batch (the reference: 150 per GPU, random order, last partial batch dropped), or a token
budget with length bucketing (fairseq-style: shuffle, sort chunks of `bucket_batches` batches by length, cut
greedily under the budget, shuffle the batches).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    """Every manifest shard exists with its rows (and sha256), and every Arrow file on disk is in the manifest.

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


def load_split(data_dir: str | Path, split: str, manifest: dict | None = None) -> datasets.Dataset:
    """Memory-mapped split; its row count must match the manifest's shards."""
    path = Path(data_dir) / split
    if not path.is_dir():
        raise DataError(f"{path}: split directory missing")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises several types for a broken dir
        raise DataError(f"{path}: cannot load with datasets.load_from_disk: {e}") from e
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: columns {missing} missing; has {ds.column_names}")
    if manifest is not None:
        expected = sum(s["rows"] for s in manifest["shards"] if s["split"] == split)
        if len(ds) != expected:
            raise DataError(f"{path}: {len(ds)} rows, manifest shards of split {split!r} say {expected}")
    return ds


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


def fixed_pair_batches(n: int, batch_pairs: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Random (or, rng=None, sequential) batches of exactly batch_pairs rows; the last partial batch is dropped."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    n_full = n // batch_pairs
    return [order[i * batch_pairs : (i + 1) * batch_pairs] for i in range(n_full)]


def token_budget_batches(
    lengths: np.ndarray, batch_tokens: int, bucket_batches: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Length-bucketed batches whose packed size (4 views: 2 x (src + trg) tokens per pair) fits batch_tokens."""
    cost = 2 * lengths.sum(axis=1)  # (N,) tokens a pair puts into the packed stream
    order = rng.permutation(len(cost))
    per_batch = max(1, batch_tokens // max(1, int(cost.mean()) if len(cost) else 1))
    chunk = per_batch * bucket_batches  # pairs sorted together; larger = less padding-like waste, less randomness
    batches = []
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        idx = idx[np.argsort(cost[idx], kind="stable")]
        batches.extend(_cut(idx, cost[idx], batch_tokens))
    return [batches[i] for i in rng.permutation(len(batches))]


def _cut(idx: np.ndarray, cost: np.ndarray, budget: int) -> list[np.ndarray]:
    """Greedy cut of length-sorted idx into runs with sum(cost) <= budget (a lone pair over budget stays alone)."""
    out, start, total = [], 0, 0
    for i, c in enumerate(cost.tolist()):
        if i > start and total + c > budget:
            out.append(idx[start:i])
            start, total = i, 0
        total += c
    if start < len(idx):
        out.append(idx[start:])
    return out


@dataclass
class SamplerState:
    epoch: int = 0
    index: int = 0  # batches of this rank's list already consumed in `epoch`


class DistributedBatchSampler:
    """Deterministic per-rank batches of row indices; position (epoch, index) is checkpointable.

    lengths: (N, 2) from pair_lengths. Exactly one of batch_pairs / batch_tokens (> 0) picks the mode.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        *,
        batch_pairs: int = 0,
        batch_tokens: int = 0,
        bucket_batches: int = 100,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if (batch_pairs > 0) == (batch_tokens > 0):
            raise ValueError(f"exactly one of batch_pairs ({batch_pairs}) / batch_tokens ({batch_tokens}) must be > 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.lengths, self.batch_pairs, self.batch_tokens = lengths, batch_pairs, batch_tokens
        self.bucket_batches, self.seed, self.shuffle = bucket_batches, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.state = SamplerState()
        self._plan_epoch, self._plan = -1, []

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of `epoch` (cached): same count on every rank."""
        if epoch != self._plan_epoch:
            rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
            n = len(self.lengths)
            if self.batch_tokens:
                plan = token_budget_batches(
                    self.lengths,
                    self.batch_tokens,
                    self.bucket_batches,
                    rng or np.random.default_rng([self.seed, epoch]),
                )
            else:
                plan = fixed_pair_batches(n, self.batch_pairs, rng)
            per_rank = len(plan) // self.world_size
            self._plan = plan[self.rank :: self.world_size][:per_rank]
            self._plan_epoch = epoch
        return self._plan

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.epoch_batches(self.state.epoch))

    def next_batch(self) -> np.ndarray:
        """The batch at the current position; advances (and rolls into the next epoch)."""
        batches = self.epoch_batches(self.state.epoch)
        if not batches:
            raise DataError(
                f"an epoch yields no batch for {self.world_size} rank(s) from {len(self.lengths)} pairs "
                f"(--batch-pairs {self.batch_pairs} / --batch-tokens {self.batch_tokens}); "
                "lower the batch size or add data"
            )
        if self.state.index >= len(batches):
            self.state = SamplerState(self.state.epoch + 1, 0)
            batches = self.epoch_batches(self.state.epoch)
        batch = batches[self.state.index]
        self.state.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.state.epoch, "index": self.state.index, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(
                f"sampler state was saved with seed {state.get('seed')} / world size "
                f"{state.get('world_size')}, this run has {self.seed} / {self.world_size}: resuming "
                "would not continue the same data order (keep --seed and the process count)"
            )
        self.state = SamplerState(int(state["epoch"]), int(state["index"]))


def special_ids(manifest: dict) -> dict:
    """The manifest's special ids as ints (bos, pad, eos, unk, mask)."""
    return {k: int(v) for k, v in manifest["tokenizer"]["special_ids"].items()}
