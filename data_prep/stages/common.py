"""What every stage shares: the work directory's paths, atomic writes, and the task callable the engine runs.

A task writes each output to a temporary name and renames it into place, so a task killed midway leaves no file
that a later stage could mistake for a result; the engine marks the task complete only after it returns, and a
rerun runs it again from the start, overwriting.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow as pa
from loguru import logger

from ..plan import Plan, load_plan

if not os.environ.get("DATA_PREP_ENGINE_LOGS"):  # the engine's per-task console lines (a failure still raises)
    logger.disable("datatrove")


class Work:
    """Paths of a work directory `.OUT.work/` (plan.py describes the layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.build = self.root / "build"
        self.scratch = self.root / "scratch"
        self.engine = self.root / "engine"

    def file(self, stage: str, index: int, suffix: str) -> Path:
        """scratch/STAGE/NNNNN.SUFFIX: task `index`'s output of a stage."""
        return self.scratch / stage / f"{index:05d}.{suffix}"

    def one(self, name: str) -> Path:
        return self.scratch / name

    def mkdirs(self) -> None:
        for sub in ("read", "dedup", "sample", "encode"):
            (self.scratch / sub).mkdir(parents=True, exist_ok=True)
        for split in ("train", "valid"):
            (self.build / split).mkdir(parents=True, exist_ok=True)
        self.engine.mkdir(parents=True, exist_ok=True)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))


def read_json(path: Path):
    return json.loads(path.read_bytes().decode("utf-8", "surrogatepass"))


def write_ipc(path: Path, table: pa.Table, stream: bool = False, max_chunk: int | None = None) -> None:
    """An Arrow IPC file (random access, memory-mappable) or stream (the `datasets` shard format)."""
    tmp = _tmp(path)
    with pa.OSFile(str(tmp), "wb") as sink:
        new = pa.ipc.new_stream if stream else pa.ipc.new_file
        with new(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max_chunk)
    os.replace(tmp, path)


def read_ipc(path: Path) -> pa.Table:
    """A memory-mapped Arrow IPC file (no copy into RAM)."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


@dataclass
class Step:
    """A stage's task for the engine: called as `step(data, rank, world_size)` (datatrove's pipeline signature),
    it runs task `rank` of the stage. Holds only the work directory and the plan's identity, so it pickles small."""

    work: str
    plan_id: str

    @property
    def plan(self) -> Plan:
        return load_plan(self.work, self.plan_id)

    @property
    def paths(self) -> Work:
        return Work(self.work)

    def __call__(self, data, rank: int, world_size: int):
        self.run(rank)
        return data

    def run(self, task: int) -> None:
        raise NotImplementedError


@cache
def held_out_keys(path: str, plan_id: str) -> frozenset[str]:
    """The `--exclude-flores` keys written by the driver (one per line), read once per process."""
    p = Path(path)
    return frozenset(p.read_text(encoding="utf-8").splitlines()) if p.is_file() else frozenset()
