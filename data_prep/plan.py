"""The plan of a build: what every task of every stage does, fixed before the first task runs.

It depends only on the inputs and the flags (never on `--workers` or the number of machines), so any machine
computes the same plan, a killed run resumes under it, and every stage's task count is known up front (a Slurm
array per stage can be submitted at once, each depending on the one before).

- read tasks: consecutive units (sources.py) of about `task_bytes` together, in --source order (a plain text file
  larger than that is cut into byte ranges of that size);
- partitions: the 64-bit pair-key space cut into `partitions` equal ranges; dedup and encode run one task each.

Layout of the work directory `.OUT.work/` (beside `--out`, same file system):

    plan.json           this plan (a rerun with another plan starts over)
    build/              the future OUT: train/, valid/, tokenizer/, skipped.jsonl, sampling/, manifest.json
    scratch/            the stages' intermediate files (see data_prep/stages/)
    engine/STAGE/       the engine's completion markers, logs and stats per stage
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from .sources import ReadOptions, Source, Unit

TASK_BYTES_MAX = 64 * 2**20  # read task: at most this much input (a worker holds one task's rows)
TASK_BYTES_MIN = 4 * 2**20  # below this a task's fixed costs (engine bookkeeping, 4 files) start to show
READ_TASKS_MIN = 32  # small corpora are still cut into this many read tasks (balance over workers)
PARTITION_BYTES = 16 * 2**20  # input bytes per dedup/encode partition (about 60k NLLB-length pairs)
MIN_PARTITIONS = 16  # encode tasks of a small corpus: enough to keep 2-8 workers busy to the end
MAX_PARTITIONS = 1 << 16


@dataclass
class Plan:
    fingerprint: str
    """Hash of the format version, the output-deciding flags and every input (see prepare.py)."""
    sources: list[str]
    """The --source specs, in order."""
    units: list[Unit]
    """Every unit of every source, in reading order."""
    tasks: list[tuple[int, int]]
    """Read task t reads units[a:b] for (a, b) = tasks[t]."""
    partitions: int
    """Dedup/encode tasks: partition p holds the pair keys in [p * 2^64 / P, (p + 1) * 2^64 / P)."""
    config: dict
    """The PrepConfig fields the stages use (prepare.PrepConfig.stage_json)."""

    def to_json(self) -> dict:
        return {**asdict(self), "units": [asdict(u) for u in self.units]}

    @classmethod
    def from_json(cls, blob: dict) -> Plan:
        units = [Unit(**u) for u in blob["units"]]
        return cls(blob["fingerprint"], blob["sources"], units, [tuple(t) for t in blob["tasks"]],
                   blob["partitions"], blob["config"])  # fmt: skip

    def identity(self) -> str:
        """What a resumed run must share with the one that began the work directory."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True, default=str).encode()).hexdigest()

    def read_options(self) -> ReadOptions:
        opts = dict(self.config["read"])
        for key in ("flores_langs", "gettext_domains", "columns"):
            opts[key] = tuple(opts[key])
        return ReadOptions(**opts)

    def source(self, unit: Unit) -> Source:
        fmt, _, path = self.sources[unit.source].partition(":")
        return Source(fmt, path)

    def bounds(self, p: int) -> tuple[int, int]:
        """Key range [lo, hi) of partition p (hi = 2^64 for the last)."""
        return p * 2**64 // self.partitions, (p + 1) * 2**64 // self.partitions


def group_units(units: list[Unit], task_bytes: int | None) -> list[tuple[int, int]]:
    """Consecutive units of about `task_bytes` (default from the total: at least READ_TASKS_MIN tasks, each
    between TASK_BYTES_MIN and TASK_BYTES_MAX); a unit larger than that is a task of its own."""
    target = task_bytes or task_target(units)
    tasks, start, acc = [], 0, 0
    for i, unit in enumerate(units):
        if acc and acc + unit.weight > target:
            tasks.append((start, i))
            start, acc = i, 0
        acc += unit.weight
    if start < len(units):
        tasks.append((start, len(units)))
    return tasks


def task_target(units: list[Unit]) -> int:
    """Input bytes per read task: at least READ_TASKS_MIN tasks, each between TASK_BYTES_MIN and TASK_BYTES_MAX."""
    return min(max(sum(u.weight for u in units) // READ_TASKS_MIN, TASK_BYTES_MIN), TASK_BYTES_MAX)


def default_partitions(units: list[Unit]) -> int:
    return min(max(MIN_PARTITIONS, math.ceil(sum(u.weight for u in units) / PARTITION_BYTES)), MAX_PARTITIONS)


def make_plan(fingerprint: str, cfg, sources: list[Source], aux_inputs: list[dict]) -> Plan:
    """The plan of `cfg` (prepare.PrepConfig) over the parsed sources."""
    opts = cfg.read
    task_bytes = int(cfg.task_mb * 2**20) if cfg.task_mb else None
    whole = [u for i, src in enumerate(sources) for u in src.units(i, opts)]
    target = task_bytes or task_target(whole)
    units = [u for i, src in enumerate(sources) for u in src.units(i, opts, target)]  # big text files in ranges
    partitions = cfg.partitions or default_partitions(units)
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"--partitions {partitions}: must be in [1, {MAX_PARTITIONS}]")
    return Plan(
        fingerprint, list(cfg.sources), units, group_units(units, task_bytes), partitions, cfg.stage_json(aux_inputs)
    )


@cache
def load_plan(work: str, identity: str) -> Plan:
    """The plan of a work directory, read once per process (the tasks of a stage share it); `identity` is the
    plan's `identity()` as the run that started the task saw it, so a stale cached plan is never used."""
    plan = Plan.from_json(json.loads((Path(work) / "plan.json").read_text()))
    if plan.identity() != identity:
        raise RuntimeError(f"{work}/plan.json changed under a running task (another run replaced the work directory)")
    return plan
