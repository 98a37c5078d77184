"""Stage `merge` (one task): the small merge that makes `build/` a prepared dataset, then puts it in place of OUT.

From the per-task stats only (no shard is read again): the counts (`read == kept + sum(skipped)`), `skipped.jsonl`
(the read tasks' lines in input order, then the duplicates partition by partition), `train/` and `valid/`'s
`state.json` and `dataset_info.json` (the `save_to_disk` layout over the encode tasks' shards), the sampling files
(lengths.py) and `manifest.json`, written last. Then the build replaces OUT (workdir.py: two renames).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import lengths, workdir
from ..output import length_stats
from ..skiplog import MAX_EXAMPLES, MAX_WARNINGS, SKIPPED_FILE, WARNED
from .common import Step, read_ipc, read_json, write_bytes
from .encode import FEATURES, SHARD_SCHEMA, SPLITS, shard_name

log = logging.getLogger("data_prep")
FORMAT_VERSION = 3  # bump when the output of the same inputs changes (3: rows in key order, parallel stages)


class MergeStep(Step):
    def run(self, task: int) -> None:
        start = time.perf_counter()
        plan, work = self.plan, self.paths
        limits = read_json(work.one("summary.json"))["limits"]
        raw = [read_json(work.file("read", t, "json")) for t in range(len(plan.tasks))]
        max_pairs = plan.config["max_pairs"]
        stopped = max_pairs is not None and (sum(r["read"] for r in raw) > max_pairs or any(r["stopped"] for r in raw))
        reads = [self._recount(t, r, lim) if lim is not None else r for t, (r, lim) in enumerate(zip(raw, limits))]
        dedup = [read_json(work.file("dedup", p, "json")) for p in range(plan.partitions)]
        encoded = [read_json(work.file("encode", p, "json")) for p in range(plan.partitions)]
        counts = _counts(reads, dedup)
        examples = self._skipped_file(reads, limits)
        shards = {split: self._split_dir(split, encoded) for split in SPLITS}
        train = [dict(e["train"], index=p) for p, e in enumerate(encoded) if e["train"]["rows"]]
        lengths.merge_sampling_files(work.build, "train", [self._sampling_part(s) for s in train])
        manifest = self._manifest(counts, stopped, examples, shards, encoded, reads)
        seconds = read_json(work.one("seconds.json")) if work.one("seconds.json").is_file() else {}
        manifest["seconds"] = {**seconds, "merge": round(time.perf_counter() - start, 3)}
        manifest["scratch_bytes"] = sum(f.stat().st_size for f in work.scratch.rglob("*") if f.is_file())
        write_bytes(work.build / "manifest.json", (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
        workdir.commit(work.build, Path(plan.config["out"]))

    def _recount(self, t: int, counts: dict, limit: int) -> dict:
        """A read task's counts over its first `limit` records only (the task --max-pairs cuts)."""
        if limit == 0:
            return {
                **counts,
                "read": 0,
                "spooled": 0,
                "skipped": {},
                "by_source": {},
                "examples": {},
                "n_skip_lines": 0,
            }
        work, plan = self.paths, self.plan
        seqs = np.load(work.file("read", t, "skipseq.npy"))
        n_skip = int((seqs < limit).sum())
        with open(work.file("read", t, "skipped.jsonl"), "rb") as f:
            entries = [json.loads(next(f)) for _ in range(n_skip)]
        kept_seq = read_ipc(work.file("read", t, "arrow")).column("seq").to_numpy()
        a, _ = plan.tasks[t]
        bounds = np.cumsum([0, *counts["unit_records"]])  # seq where each unit starts
        by_source: dict = {}
        for u, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            hi = min(hi, limit)
            if lo >= hi:
                break
            name = plan.source(plan.units[a + u]).name
            entry = by_source.setdefault(name, {"read": 0, "spooled": 0, "skipped": Counter()})
            entry["read"] += int(hi - lo)
            entry["spooled"] += int(((kept_seq >= lo) & (kept_seq < hi)).sum())
            entry["skipped"].update(e["reason"] for e, s in zip(entries, seqs) if lo <= s < hi)
        examples: dict = {}
        for e in entries:
            examples.setdefault(e["reason"], []).append([e["where"], e.get("detail", "")])
        return {
            **counts,
            "read": min(limit, counts["read"]),
            "spooled": int((kept_seq < limit).sum()),
            "skipped": dict(Counter(e["reason"] for e in entries)),
            "by_source": {k: {**v, "skipped": dict(v["skipped"])} for k, v in by_source.items()},
            "examples": {k: v[: max(MAX_EXAMPLES, MAX_WARNINGS)] for k, v in examples.items()},
            "n_skip_lines": n_skip,
        }

    def _skipped_file(self, reads: list[dict], limits: list) -> dict[str, list]:
        """build/skipped.jsonl; returns the first locations (and details) per reason, in the file's order."""
        work = self.paths
        examples: dict[str, list] = {}
        with open(work.build / SKIPPED_FILE, "wb") as out:
            for t, (counts, limit) in enumerate(zip(reads, limits)):
                if limit == 0:
                    continue
                with open(work.file("read", t, "skipped.jsonl"), "rb") as f:
                    if limit is None:
                        shutil.copyfileobj(f, out, 1 << 22)
                    else:
                        out.writelines(next(f) for _ in range(counts["n_skip_lines"]))
                for reason, found in counts["examples"].items():
                    examples.setdefault(reason, []).extend(found)
            for p in range(self.plan.partitions):
                with open(work.file("dedup", p, "skipped.jsonl"), "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
                    f.seek(0)
                    dups = examples.setdefault("duplicate", [])
                    while len(dups) < MAX_EXAMPLES and (line := f.readline()):
                        entry = json.loads(line)
                        dups.append([entry["where"], entry.get("detail", "")])
        return examples

    def _split_dir(self, split: str, encoded: list[dict]) -> list[dict]:
        """state.json and dataset_info.json of build/SPLIT over its shards; the manifest's shard entries."""
        work, n = self.paths, self.plan.partitions
        shards = [
            {"split": split, "file": e[split]["file"], "rows": e[split]["rows"], "sha256": e[split]["sha256"]}
            for e in encoded
            if e[split]["rows"]
        ]
        folder = work.build / split
        folder.mkdir(parents=True, exist_ok=True)
        if not shards:  # load_from_disk needs one data file
            name = shard_name(split, 0, n)
            with pa.OSFile(str(work.build / name), "wb") as sink, pa.ipc.new_stream(sink, SHARD_SCHEMA):
                pass
            from ..output import file_sha256

            shards = [{"split": split, "file": name, "rows": 0, "sha256": file_sha256(work.build / name)}]
        digest = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()[:16]
        state = {
            "_data_files": [{"filename": Path(s["file"]).name} for s in shards],
            "_fingerprint": digest,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        info = {"citation": "", "description": "", "features": FEATURES, "homepage": "", "license": ""}
        (folder / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
        return shards

    def _sampling_part(self, stats: dict) -> dict:
        work, p = self.paths, stats["index"]
        part = {"rows": stats["rows"], "file": stats["file"], "sha256": stats["sha256"]}
        if "max_id" in stats:  # encode stats written before the field: merge_sampling_files reads the shards instead
            part["max_id"] = stats["max_id"]
        return {
            **part,
            "lengths": work.file("encode", p, "train_lengths.npy"),
            "codes": work.file("encode", p, "train_codes.npy"),
            "index": work.file("encode", p, "train_index.npy"),
            "pairs": list(stats["pairs"]),
        }

    def _manifest(self, counts, stopped, examples, shards, encoded, reads) -> dict:
        plan, work = self.plan, self.paths
        cfg = plan.config
        max_tokens = cfg["max_tokens"]
        hist = {side: np.zeros(max_tokens + 1, dtype=np.int64) for side in ("src", "trg")}
        pairs: Counter = Counter()
        for e in encoded:
            for split in SPLITS:
                if e[split]["rows"]:
                    pairs.update(e[split]["pairs"])
                    for side in hist:
                        hist[side] += np.asarray(e[split]["length_hist"][side], dtype=np.int64)
        _warn(examples, counts["skipped"])
        rows = {split: sum(s["rows"] for s in shards[split]) for split in SPLITS}
        tok = {k: v for k, v in read_json(work.one("tokenizer.json")).items() if k != "backend"}
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": plan.fingerprint,
            "args": cfg["args"],
            "inputs": _inputs(plan, reads),
            "tokenizer": tok,
            "max_tokens": max_tokens,
            "counts": counts,
            "stopped_at_max_pairs": stopped,
            "rows": rows,
            "truncated": {
                side: sum(e[s].get("truncated", {}).get(side, 0) for e in encoded for s in SPLITS)
                for side in ("src", "trg")
            },  # fmt: skip
            "token_lengths": {side: length_stats(h) for side, h in hist.items()},
            "language_pairs": dict(sorted(pairs.items())),
            "skip_examples": {k: [w for w, _ in v[:MAX_EXAMPLES]] for k, v in sorted(examples.items()) if v},
            "skipped_file": SKIPPED_FILE,
            "shards": shards["train"] + shards["valid"],
            "partitions": plan.partitions,
            "read_tasks": len(plan.tasks),
            "versions": {m: version(m) for m in ("datasets", "pyarrow", "tokenizers", "transformers", "datatrove")},
        }


def _counts(reads: list[dict], dedup: list[dict]) -> dict:
    skipped: Counter = Counter()
    by_source: dict = {}
    for r in reads:
        skipped.update(r["skipped"])
        for name, entry in r["by_source"].items():
            into = by_source.setdefault(name, {"read": 0, "spooled": 0, "skipped": Counter()})
            into["read"] += entry["read"]
            into["spooled"] += entry["spooled"]
            into["skipped"].update(entry["skipped"])
    skipped["duplicate"] = sum(d["duplicates"] for d in dedup)
    return {
        "read": sum(r["read"] for r in reads),
        "kept": sum(d["kept"] for d in dedup),
        "skipped": dict(sorted(skipped.items())),
        "by_source": {k: {**v, "skipped": dict(v["skipped"])} for k, v in by_source.items()},
    }


def _warn(examples: dict[str, list], skipped: dict[str, int]) -> None:
    """The first few records of each reason that points at a broken input, then how many more."""
    for reason in sorted(WARNED):
        for where, detail in examples.get(reason, [])[:MAX_WARNINGS]:
            log.warning("skipped %s: %s %s", where, reason, detail)
        if skipped.get(reason, 0) > MAX_WARNINGS:
            log.warning("%d more %s records: see %s", skipped[reason] - MAX_WARNINGS, reason, SKIPPED_FILE)


def _inputs(plan, reads: list[dict]) -> list[dict]:
    """Every input file in --source order with its size and sha256 (hashed by the read tasks), then the others."""
    from ..output import file_sha256

    hashed = {path: entry for r in reads for path, entry in r["files"].items()}
    opts, entries = plan.read_options(), []
    for spec in plan.sources:
        fmt, _, path = spec.partition(":")
        from ..sources import Source

        for f in Source(fmt, path).files(opts):
            known = hashed.get(str(f)) or {"size": f.stat().st_size, "sha256": file_sha256(f)}
            entries.append({"source": spec, "path": str(f), **known})
    return entries + plan.config["aux_inputs"]
