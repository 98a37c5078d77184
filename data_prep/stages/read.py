"""Stage `read` (one task per group of units): read, clean and hash; then `count` (one task) sums the tasks' counts.

A read task writes, for its units in order:
- `read/T.arrow`: the cleaned pairs sorted by (key, seq), one record batch: key (blake2b-8 of `src \\0 trg`, the
  dedup and split key), seq (the record's number in the task, skipped records included), texts, languages, and
  `where` (file:line). Dedup tasks binary-search the key column for their key range;
- `read/T.skipped.jsonl` (one line per skipped record, as in the final `skipped.jsonl`) and `read/T.skipseq.npy`
  (their seq numbers, for `--max-pairs`);
- `read/T.json`: counts (read, skipped by reason, per source, per language pair), the record count of each unit,
  the first locations per reason, the size and sha256 of the files whose first unit the task read.

`count` turns the per-task counts into `summary.json`: where `--max-pairs` cuts the input (records are numbered in
--source order: task by task, seq by seq) and the per-pair rates of the tokenizer sample's candidates (vocab.py).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..clean import SAME_LANGUAGE, UNKNOWN_LANGUAGE, Cleaner
from ..output import file_sha256
from ..records import Pair, Skip
from ..skiplog import MAX_EXAMPLES, MAX_WARNINGS
from .common import Step, held_out_keys, read_json, write_bytes, write_ipc, write_json

SCHEMA = pa.schema(
    [
        ("key", pa.uint64()),
        ("seq", pa.uint32()),
        ("src", pa.string()),
        ("trg", pa.string()),
        ("src_lang", pa.string()),
        ("trg_lang", pa.string()),
        ("where", pa.string()),
    ]
)


def pair_key(src: str, trg: str) -> int:
    digest = hashlib.blake2b(f"{src}\0{trg}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def skip_line(reason: str, where: str, detail: str = "") -> str:
    """One line of skipped.jsonl (ASCII escapes: lone surrogates from bad bytes stay writable)."""
    entry = {"where": where, "reason": reason, "detail": detail} if detail else {"where": where, "reason": reason}
    return json.dumps(entry) + "\n"


class _TaskLog:
    """Counts, skip lines and kept columns of one read task."""

    def __init__(self):
        self.cols: dict[str, list] = {name: [] for name in SCHEMA.names}
        self.skip_lines: list[str] = []
        self.skip_seq: list[int] = []
        self.skipped: Counter = Counter()
        self.examples: dict[str, list] = {}
        c = self.cols  # bound appends: `keep` runs once per pair
        self._add = (c["key"].append, c["seq"].append, c["src"].append, c["trg"].append, c["src_lang"].append,
                     c["trg_lang"].append, c["where"].append)  # fmt: skip

    def skip(self, seq: int, reason: str, where: str, detail: str = "") -> None:
        seen = self.skipped[reason]
        self.skipped[reason] = seen + 1
        self.skip_lines.append(skip_line(reason, where, detail))
        self.skip_seq.append(seq)
        if seen < max(MAX_EXAMPLES, MAX_WARNINGS):
            self.examples.setdefault(reason, []).append([where, detail])

    def keep(self, seq: int, pair: Pair) -> None:
        key, sq, src, trg, src_lang, trg_lang, where = self._add
        key(pair_key(pair.src, pair.trg))
        sq(seq)
        src(pair.src)
        trg(pair.trg)
        src_lang(pair.src_lang)
        trg_lang(pair.trg_lang)
        where(pair.where)

    def pairs(self) -> dict[str, int]:
        """Kept pairs per language pair."""
        counts = Counter(zip(self.cols["src_lang"], self.cols["trg_lang"]))
        return {f"{a}-{b}": n for (a, b), n in counts.items()}


class ReadStep(Step):
    """Read task t: units[a:b] of the plan through the cleaner."""

    def run(self, task: int) -> None:
        plan, work = self.plan, self.paths
        cfg, opts = plan.config, plan.read_options()
        cleaner = Cleaner(
            cfg["max_chars"], cfg["max_ratio"], held_out_keys(str(work.one("held_out.txt")), self.plan_id)
        )
        limit, out = cfg["max_pairs"], _TaskLog()
        seq, unit_records, by_source, stopped = 0, [], {}, False
        a, b = plan.tasks[task]
        for unit in plan.units[a:b]:
            source = plan.source(unit)
            start, skipped_before, kept_before = seq, Counter(out.skipped), len(out.cols["key"])
            for rec in source.read(unit, opts):
                if limit is not None and seq >= limit:
                    stopped = True
                    break
                _take(rec, seq, cleaner, out)
                seq += 1
            unit_records.append(seq - start)
            entry = by_source.setdefault(source.name, {"read": 0, "spooled": 0, "skipped": Counter()})
            entry["read"] += seq - start
            entry["spooled"] += len(out.cols["key"]) - kept_before
            entry["skipped"].update(out.skipped - skipped_before)
            if stopped:
                break
        self._write(task, out, unit_records, by_source, stopped, seq)

    def _write(self, task: int, out: _TaskLog, unit_records: list[int], by_source: dict, stopped: bool, n: int) -> None:
        work = self.paths
        table = pa.table(out.cols, schema=SCHEMA)
        table = table.take(pc.sort_indices(table, [("key", "ascending"), ("seq", "ascending")]))
        write_ipc(work.file("read", task, "arrow"), table, max_chunk=max(table.num_rows, 1))
        write_bytes(work.file("read", task, "skipped.jsonl"), "".join(out.skip_lines).encode())
        np.save(work.file("read", task, "skipseq.npy"), np.asarray(out.skip_seq, dtype=np.uint32))
        counts = {
            "read": n,
            "spooled": table.num_rows,
            "skipped": dict(out.skipped),
            "by_source": {k: {**v, "skipped": dict(v["skipped"])} for k, v in by_source.items()},
            "pairs": out.pairs(),
            "unit_records": unit_records,
            "examples": out.examples,
            "stopped": stopped,
            "files": self._hashes(task),
        }
        write_json(work.file("read", task, "json"), counts)

    def _hashes(self, task: int) -> dict[str, dict]:
        """Size and sha256 of the files whose first unit this task reads (each file hashed by one task)."""
        plan = self.plan
        a, b = plan.tasks[task]
        found = {}
        for unit in plan.units[a:b]:
            if unit.part > 0:
                continue  # not the first row group / row range of its file
            source = plan.source(unit)
            paths = source.files(plan.read_options()) if source.fmt in ("moses", "flores", "hf") else [Path(unit.path)]
            for path in paths:
                found[str(path)] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
        return found


def _take(rec, seq: int, cleaner: Cleaner, out: _TaskLog) -> None:
    if isinstance(rec, Skip):
        out.skip(seq, rec.reason, rec.where, rec.detail)
        return
    result = cleaner.check(rec)
    if isinstance(result, str):
        langs = result in (UNKNOWN_LANGUAGE, SAME_LANGUAGE)
        out.skip(seq, result, rec.where, f"src_lang {rec.src_lang!r}, trg_lang {rec.trg_lang!r}" if langs else "")
    else:
        out.keep(seq, result)


def record_limits(reads: list[int], max_pairs: int | None) -> list[int | None]:
    """Per read task: None (all its records count), or how many of its first records do (`--max-pairs`)."""
    if max_pairs is None:
        return [None] * len(reads)
    limits, before = [], 0
    for n in reads:
        limits.append(None if before + n <= max_pairs else max(max_pairs - before, 0))
        before += n
    return limits


class CountStep(Step):
    """One task: `summary.json` from every read task's counts (the --max-pairs cut, tokenizer sample rates)."""

    def run(self, task: int) -> None:
        from .vocab import sample_thresholds

        plan, work = self.plan, self.paths
        counts = [read_json(work.file("read", t, "json")) for t in range(len(plan.tasks))]
        limits = record_limits([c["read"] for c in counts], plan.config["max_pairs"])
        pairs: Counter = Counter()
        for c, limit in zip(counts, limits):
            if limit != 0:
                pairs.update(c["pairs"])
        cfg = plan.config
        budget = cfg["tokenizer_max_sentences"]  # candidates: twice the budget, on the counts before dedup
        thresholds = sample_thresholds(pairs, cfg["tokenizer_alpha"], None if budget is None else 2 * budget)
        write_json(work.one("summary.json"), {"limits": limits, "pairs": dict(pairs), "sample_thresholds": thresholds})
