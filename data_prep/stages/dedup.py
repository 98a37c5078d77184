"""Stage `dedup` (one task per key partition): global exact dedup without any process holding every key.

Partition p owns the keys in [p * 2^64 / P, (p + 1) * 2^64 / P). Every read task's file is sorted by key, so the
task takes its slice of each by binary search (memory-mapped: only the slice is read) and holds about N / P rows.
Sorted by (key, read task, seq), i.e. by key and then by input order, the first row of each key is kept and the
others are `duplicate`s naming the pair they repeat; exact duplicates share a key, so they meet in one partition.

Writes `dedup/P.arrow` (the kept pairs in key order: the dataset's row order), `dedup/P.skipped.jsonl` (the
duplicates, in input order), `sample/P.arrow` (this partition's candidates for the tokenizer sample, vocab.py)
and `dedup/P.json` (kept pairs in all and per language pair, duplicates, pairs below the valid threshold, the
smallest keys for `--min-valid`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .common import Step, read_ipc, read_json, write_bytes, write_ipc, write_json
from .read import SCHEMA, skip_line
from .vocab import GOLDEN, in_sample

KEPT = ["key", "src", "trg", "src_lang", "trg_lang"]


def valid_threshold(fraction: float) -> int:
    return min(int(fraction * 2.0**64), 2**64 - 1)


def pair_names(table) -> np.ndarray:
    """'src_lang-trg_lang' of every row (object array)."""
    return pc.binary_join_element_wise(table.column("src_lang"), table.column("trg_lang"), "-").to_numpy(
        zero_copy_only=False
    )


class DedupStep(Step):
    def run(self, task: int) -> None:
        rows = self._gather(task)
        keys = rows.column("key").to_numpy()
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        self._write_duplicates(task, rows, first)
        kept = rows.filter(pa.array(first)).select(KEPT)
        write_ipc(self.paths.file("dedup", task, "arrow"), kept)
        cfg = self.plan.config
        kept_keys = keys[first]
        names = pair_names(kept) if kept.num_rows else np.zeros(0, dtype=object)
        n_sample = self._write_sample(task, kept, kept_keys, names)
        uniq, counts = np.unique(names, return_counts=True)
        stats = {
            "kept": kept.num_rows,
            "pairs": {str(k): int(c) for k, c in zip(uniq, counts)},
            "duplicates": int((~first).sum()),
            "valid": int((kept_keys < np.uint64(valid_threshold(cfg["valid_fraction"]))).sum()),
            "smallest": [int(k) for k in kept_keys[: cfg["min_valid"]]],
            "sample": n_sample,
        }
        write_json(self.paths.file("dedup", task, "json"), stats)

    def _gather(self, task: int) -> pa.Table:
        """This partition's rows from every read task (within --max-pairs), sorted by (key, task, seq)."""
        plan, work = self.plan, self.paths
        lo, hi = plan.bounds(task)
        parts = []
        for t, limit in enumerate(read_json(work.one("summary.json"))["limits"]):
            if limit == 0:
                continue
            table = read_ipc(work.file("read", t, "arrow"))
            if table.num_rows == 0:
                continue
            keys = table.column("key").chunk(0).to_numpy()  # one record batch: zero-copy from the memory map
            i = int(np.searchsorted(keys, np.uint64(lo)))
            j = len(keys) if hi >= 2**64 else int(np.searchsorted(keys, np.uint64(hi)))
            part = table.slice(i, j - i)
            if limit is not None:
                part = part.filter(pc.less(part.column("seq"), pa.scalar(limit, pa.uint32())))
            parts.append(part.append_column("task", pa.array(np.full(part.num_rows, t, dtype=np.uint32))))
        if not parts:
            return SCHEMA.empty_table().append_column("task", pa.array([], pa.uint32()))
        rows = pa.concat_tables(parts)
        return rows.take(pc.sort_indices(rows, [("key", "ascending"), ("task", "ascending"), ("seq", "ascending")]))

    def _write_duplicates(self, task: int, rows: pa.Table, first: np.ndarray) -> None:
        n = len(first)
        first_of = np.maximum.accumulate(np.where(first, np.arange(n), 0))  # row of each key's kept pair
        dups = np.flatnonzero(~first)
        order = np.lexsort((rows.column("seq").to_numpy()[dups], rows.column("task").to_numpy()[dups]))
        dups = dups[order]  # input order
        where = rows.column("where")
        lines = [
            skip_line("duplicate", dup, f"same pair as {orig}")
            for dup, orig in zip(
                where.take(pa.array(dups)).to_pylist(), where.take(pa.array(first_of[dups])).to_pylist()
            )
        ]
        write_bytes(self.paths.file("dedup", task, "skipped.jsonl"), "".join(lines).encode())

    def _write_sample(self, task: int, kept: pa.Table, keys: np.ndarray, names: np.ndarray) -> int:
        """This partition's candidates for the tokenizer sample (only when a tokenizer is trained): src, trg, the
        language pair and the remixed key, which vocab.py thins to the final per-pair thresholds."""
        if self.plan.config["train_tokenizer"] is None:
            return 0
        thresholds = read_json(self.paths.one("summary.json"))["sample_thresholds"]
        mask = in_sample(keys, names, thresholds) if len(keys) else np.zeros(0, dtype=bool)
        with np.errstate(over="ignore"):
            mixed = keys[mask] * GOLDEN
        sample = kept.filter(pa.array(mask)).select(["src", "trg"])
        sample = sample.append_column("pair", pa.array(names[mask].tolist(), pa.string()))
        write_ipc(self.paths.file("sample", task, "arrow"), sample.append_column("mixed", pa.array(mixed)))
        return sample.num_rows
