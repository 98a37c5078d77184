"""Stage `encode` (one task per key partition): tokenise the partition's kept pairs and write its shards.

Each task splits its pairs into train and valid (vocab.py), tokenises both sides with `encode_batch_fast` (one
thread: parallelism is by task), `<s>` + at most `max_tokens - 2` ids + `</s>` as int32 (truncation counted), and
writes `build/{train,valid}/data-PPPPP-of-NNNNN.arrow`: an Arrow stream with the `datasets` features in its schema
metadata, the shard format `save_to_disk` writes. Beside it, `encode/P.json` (rows, truncations, token-length
histograms, language pairs, the largest token id, the shard's sha256) and, for train, the shard's sampling arrays
(lengths.py): `encode/P.train_lengths.npy` (uint16 (n, 2)), `P.train_codes.npy` (uint16: language-pair code in
this shard's first-appearance order) and `P.train_index.npy` (rows grouped by code). The merge turns them into the
dataset's sampling files without reading a shard again.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..output import file_sha256
from .common import Step, read_ipc, read_json, write_json
from .dedup import pair_names, valid_threshold

FEATURES = {
    "src_ids": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
    "trg_ids": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
    "src_lang": {"dtype": "string", "_type": "Value"},
    "trg_lang": {"dtype": "string", "_type": "Value"},
}
SHARD_SCHEMA = pa.schema(
    [
        ("src_ids", pa.list_(pa.int32())),
        ("trg_ids", pa.list_(pa.int32())),
        ("src_lang", pa.string()),
        ("trg_lang", pa.string()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})},
)
SPLITS = ("train", "valid")
BATCH_ROWS = 8192  # rows tokenised and written per record batch (memory: one batch of ids)


def shard_name(split: str, p: int, n: int) -> str:
    return f"{split}/data-{p:05d}-of-{n:05d}.arrow"


@cache
def _tokenizer(path: str, plan_id: str):
    from tokenizers import Tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    info = read_json(Path(path))
    return Tokenizer.from_str(info["backend"]), info["special_ids"]["bos"], info["special_ids"]["eos"]


class EncodeStep(Step):
    def run(self, task: int) -> None:
        work, plan = self.paths, self.plan
        table = read_ipc(work.file("dedup", task, "arrow"))
        keys = table.column("key").to_numpy()
        valid_keys = read_json(work.one("split.json"))["valid_keys"]
        if valid_keys is None:
            valid = keys < np.uint64(valid_threshold(plan.config["valid_fraction"]))
        else:
            valid = np.isin(keys, np.asarray(valid_keys, dtype=np.uint64))
        stats = {
            name: self._split(task, name, table.filter(pa.array(mask))) for name, mask in zip(SPLITS, (~valid, valid))
        }
        write_json(work.file("encode", task, "json"), stats)

    def _split(self, task: int, split: str, rows: pa.Table) -> dict:
        if rows.num_rows == 0:
            return {"rows": 0}
        plan, work = self.plan, self.paths
        tok, bos, eos = _tokenizer(str(work.one("tokenizer.json")), self.plan_id)
        max_tokens = plan.config["max_tokens"]
        stats = {"rows": rows.num_rows, "truncated": {"src": 0, "trg": 0}, "max_id": -1}
        hist = {side: np.zeros(max_tokens + 1, dtype=np.int64) for side in ("src", "trg")}
        lengths = np.zeros((rows.num_rows, 2), dtype=np.uint16)
        path = work.build / shard_name(split, task, plan.partitions)
        tmp = work.scratch / "encode" / f".{split}-{task}.arrow.tmp{os.getpid()}"  # never a stray file in build/
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, SHARD_SCHEMA) as writer:
            for start in range(0, rows.num_rows, BATCH_ROWS):
                part = rows.slice(start, BATCH_ROWS)
                cols = []
                for j, side in enumerate(("src", "trg")):
                    ids, n_long, top = _ids(tok, part.column(side).to_pylist(), max_tokens, bos, eos)
                    stats["truncated"][side] += n_long
                    stats["max_id"] = max(stats["max_id"], top)
                    lens = np.diff(ids.offsets.to_numpy())
                    hist[side] += np.bincount(lens, minlength=max_tokens + 1)
                    lengths[start : start + part.num_rows, j] = np.minimum(lens, 65535)
                    cols.append(ids)
                arrays = [*cols, part.column("src_lang").combine_chunks(), part.column("trg_lang").combine_chunks()]
                writer.write_batch(pa.record_batch(arrays, schema=SHARD_SCHEMA))
        os.replace(tmp, path)
        stats.update(file=shard_name(split, task, plan.partitions), sha256=file_sha256(path))
        stats["length_hist"] = {side: h.tolist() for side, h in hist.items()}
        stats["pairs"] = self._pairs(task, split, rows, lengths)
        return stats

    def _pairs(self, task: int, split: str, rows: pa.Table, lengths: np.ndarray) -> dict[str, int]:
        """Language-pair counts in first-appearance order; for train also the shard's sampling arrays."""
        names = pair_names(rows)
        uniq, first, inv = np.unique(names, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # local code = rank of first appearance
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[order] = np.arange(len(uniq))
        codes = rank[inv.reshape(-1)].astype(np.uint16)
        counts = np.bincount(codes, minlength=len(uniq))
        if split == "train":
            work = self.paths
            np.save(work.file("encode", task, "train_lengths.npy"), lengths)
            np.save(work.file("encode", task, "train_codes.npy"), codes)
            np.save(work.file("encode", task, "train_index.npy"), np.argsort(codes, kind="stable").astype(np.uint32))
        return {str(uniq[i]): int(counts[rank[i]]) for i in order}


def _ids(tok, texts: list[str], max_tokens: int, bos: int, eos: int) -> tuple[pa.ListArray, int, int]:
    """(n,) list<int32> of `<s>` + ids + `</s>`, cut to max_tokens; how many were cut; the largest id (-1: none)."""
    body = max_tokens - 2
    flat: list[int] = []
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    truncated = 0
    for i, enc in enumerate(tok.encode_batch_fast(texts, add_special_tokens=False)):
        ids = enc.ids
        truncated += len(ids) > body
        flat.append(bos)
        flat.extend(ids[:body])
        flat.append(eos)
        offsets[i + 1] = len(flat)
    values = np.asarray(flat, dtype=np.int32)
    top = int(values.max()) if len(values) else -1
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)), truncated, top
