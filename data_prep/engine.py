"""The stages as tasks of HF datatrove (docs/data_prep.md, "Engine", says why this engine).

Stages, in order (data_prep/stages/), each a datatrove pipeline of one step over its tasks:

    read (one task per group of input units) -> count (1) -> dedup (P partitions) -> vocab (1)
    -> encode (P partitions) -> merge (1: manifest, sampling files, then the build replaces OUT)

- One machine (the default): `LocalPipelineExecutor` with `--workers` processes; nothing to install or start.
- Several machines sharing a file system: every machine runs the same command with `--machines M
  --machine-rank R`; each stage's executor gets the task range of that machine (`local_tasks`,
  `local_rank_offset`), and a machine goes on to the next stage once the engine's completion markers show every
  task of the stage done (tasks of one-task stages run on machine 0).
- Slurm: `--executor slurm` submits one `SlurmPipelineExecutor` array per stage, each depending on the one before
  (`afterok`); the merge task puts the output in place.

A task is marked complete by the engine only after it returns (`engine/STAGE/completions/`), so a rerun of a
killed build runs only the tasks that were not, on any number of workers or machines.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .stages.common import Step, Work, write_json
from .stages.dedup import DedupStep
from .stages.encode import EncodeStep
from .stages.merge import MergeStep
from .stages.read import CountStep, ReadStep
from .stages.vocab import VocabStep

log = logging.getLogger("data_prep")
POLL_SECONDS = 0.5  # how often a machine looks for the other machines' completion markers
PRELOAD = ["data_prep.engine", "datatrove.executor.local", "pyarrow.compute", "tokenizers"]


@dataclass(frozen=True)
class Cluster:
    """How this process takes part in a build."""

    workers: int = 1
    """Processes on this machine (--workers)."""
    machines: int = 1
    """Machines sharing the build (--machines); all see the work directory on a shared file system."""
    machine_rank: int = 0
    """This machine's number in [0, machines) (--machine-rank)."""
    executor: str = "local"
    """`local` (this machine's processes) or `slurm` (submit job arrays and return)."""
    slurm: dict = field(default_factory=dict)
    """SlurmPipelineExecutor arguments (partition, time, ...) for `slurm`."""


def stages(work: Path, plan_id: str, n_tasks: int, partitions: int) -> list[tuple[str, Step, int]]:
    """(name, step, number of tasks) of every stage, in order."""
    w = str(work)
    return [
        ("read", ReadStep(w, plan_id), n_tasks),
        ("count", CountStep(w, plan_id), 1),
        ("dedup", DedupStep(w, plan_id), partitions),
        ("vocab", VocabStep(w, plan_id), 1),
        ("encode", EncodeStep(w, plan_id), partitions),
        ("merge", MergeStep(w, plan_id), 1),
    ]


def share(n: int, machines: int, rank: int) -> tuple[int, int]:
    """Task range [lo, hi) of machine `rank` (contiguous, sizes differing by at most one)."""
    return n * rank // machines, n * (rank + 1) // machines


def run_local(work: Work, plan_id: str, plan, cluster: Cluster, done: Callable[[], bool]) -> bool:
    """Run this machine's tasks of every stage, waiting between stages for the other machines' tasks.
    -> False when `done()` became true while waiting (another machine finished the build)."""
    import multiprocess
    from datatrove.executor.local import LocalPipelineExecutor

    multiprocess.set_forkserver_preload(PRELOAD)  # workers fork from a server that imported these once
    seconds: dict[str, float] = {}
    for name, step, n in stages(work.root, plan_id, len(plan.tasks), plan.partitions):
        start = time.perf_counter()
        lo, hi = share(n, cluster.machines, cluster.machine_rank)
        workers = max(1, min(cluster.workers, hi - lo))
        executor = LocalPipelineExecutor(
            [step], tasks=n, workers=workers, logging_dir=str(work.engine / name),
            local_tasks=hi - lo, local_rank_offset=lo, start_method="forkserver",
        )  # fmt: skip
        if name == "merge" and hi > lo:
            write_json(work.one("seconds.json"), seconds)
        if hi > lo:
            executor.run()
        if not _wait(executor, n, name, done):
            return False
        seconds[name] = round(time.perf_counter() - start, 3)
        log.info("%s: %d task%s, %.1f s", name, n, "" if n == 1 else "s", seconds[name])
    return True


def _wait(executor, n: int, name: str, done: Callable[[], bool]) -> bool:
    """Until every task of the stage is marked complete (by any machine); False if `done()` first."""
    last = time.monotonic()
    while missing := executor.get_incomplete_ranks(range(n), skip_completed=True):
        if done():
            return False
        if time.monotonic() - last > 30:
            log.info("%s: waiting for %d of %d tasks on other machines (first: %d)", name, len(missing), n, missing[0])
            last = time.monotonic()
        time.sleep(POLL_SECONDS)
    return True


def submit_slurm(work: Work, plan_id: str, plan, cluster: Cluster) -> str:
    """One job array per stage, each depending on the previous; -> the last job's id."""
    from datatrove.executor.slurm import SlurmPipelineExecutor

    previous = None
    venv = Path(sys.prefix) / "bin" / "activate"
    for name, step, n in stages(work.root, plan_id, len(plan.tasks), plan.partitions):
        previous = SlurmPipelineExecutor(
            [step], tasks=n, logging_dir=str(work.engine / name), job_name=f"data_prep-{name}", depends=previous,
            venv_path=str(venv) if venv.is_file() else None, **cluster.slurm,
        )  # fmt: skip
    previous.run()
    return str(previous.job_id)
