"""Processes, devices and every collective of training, validation, checkpointing and evaluation, in one place.

Process group: one process per accelerator. The accelerator is selected (`set_device(LOCAL_RANK)`) *before* the
group exists, and the group has two backends, `cpu:gloo,cuda:nccl` (the accelerator's own backend for its tensors):
- control-plane collectives (stop flags, checkpoint verdicts, object broadcasts, file-hash gathers) run on host
  tensors over gloo, so they never touch the device: no stream synchronisation, no staging copy, no dependence on the
  current device for pickled objects;
- data-plane collectives (the step's metric sums, validation sums; DeepSpeed's own gradient reduction) run on device
  tensors over NCCL, queued on the stream like any kernel: nothing waits until the values are read.
A device-only group would force every host flag through an H2D copy, NCCL and a D2H read: one sync per step for
`_should_stop` alone. On a CPU-only machine the group is plain gloo, so the CPU tests run the same code paths.

Multi-node "once" jobs: work on node-local state runs on each node's local rank 0 (`on_each_node`); what global rank
0 writes lives on the shared file system, and `check_shared_dir` proves at start-up that every node sees it.

tests/pipeline/test_distributed.py fails when any other module calls a torch.distributed collective directly.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import uuid
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from runtime.ds_ops import cpu_op_build, use_all_gather_single

ACCELERATOR_BACKENDS = {"cuda": "nccl", "xpu": "xccl", "hpu": "hccl", "npu": "hccl"}


class SharedDirError(RuntimeError):
    """A node does not see the file global rank 0 wrote to the (supposedly shared) output directory."""


# -- process group ------------------------------------------------------------------------------------------------
def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size) of this process; from the launcher's environment before the group exists, (0, 1) alone."""
    if is_dist():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world_size() -> int:
    """Processes on this node (torchrun: LOCAL_WORLD_SIZE, deepspeed: LOCAL_SIZE); the world size otherwise."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or world()[1])


def backend_for(device_type: str, accelerator_backend: str | None = None) -> str:
    """`gloo` on CPU; `cpu:gloo,<device>:<backend>` on an accelerator, so host and device tensors both reduce."""
    if device_type == "cpu":
        return "gloo"
    backend = accelerator_backend or ACCELERATOR_BACKENDS.get(device_type)
    if backend is None or backend == "gloo":
        return "gloo"
    return f"cpu:gloo,{device_type}:{backend}"


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def select_device(device_type: str) -> torch.device:
    """This process's device: `<type>:LOCAL_RANK`, made current (must precede the process group and any collective)."""
    if device_type == "cpu":
        return torch.device("cpu")
    device = torch.device(device_type, local_rank())
    torch.get_device_module(device_type).set_device(device)
    return device


def _single_process_env() -> None:
    """`python pipeline/train.py`: a 1-rank group on a free local port (deepspeed / torchrun set these)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(os.environ.get("MASTER_PORT", port)),
    )


def init_training(timeout_minutes: float, verbose: bool = False) -> tuple[int, int]:
    """Training: select LOCAL_RANK's accelerator, then join the launcher's group through DeepSpeed (it wraps the
    torch group for its own collectives). A 1-rank group for plain `python`. Returns (rank, world size)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ:
        _single_process_env()
    accel = get_accelerator()
    device_type = accel.device_name()
    if device_type == "cpu" and local_rank() == 0:
        clear_stale_jit_lock("deepspeed_shm_comm")  # node-local: DeepSpeed JIT-loads this op in init on CPU
    select_device(device_type)
    if not is_dist():
        backend = backend_for(device_type, accel.communication_backend_name())
        quiet_build = cpu_op_build(int(os.environ.get("RANK", 0)), verbose) if device_type == "cpu" else None
        with quiet_build or contextlib.nullcontext():
            deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))
        use_all_gather_single()
    if device_type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # N ranks on one host each defaulting to all cores oversubscribe the CPU N-fold: split the cores instead
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size()))
    return world()


def init_eval(timeout_minutes: float = 60.0) -> tuple[int, int]:
    """Evaluation: join the launcher's group when WORLD_SIZE > 1 (no DeepSpeed), same device and backend rules."""
    _, size = world()
    if size > 1 and not is_dist():
        device_type = default_device_type()
        select_device(device_type)
        dist.init_process_group(backend=backend_for(device_type), timeout=timedelta(minutes=timeout_minutes))
    return world()


def finish() -> None:
    if is_dist():
        dist.destroy_process_group()


# -- collectives (no-ops without a group) -------------------------------------------------------------------------
_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce; device tensors over the accelerator backend (no host sync), host tensors over gloo."""
    if is_dist():
        dist.all_reduce(tensor, op=_OPS[op])
    return tensor


def all_ok(ok: bool) -> bool:
    """True when every rank reports ok (MIN over a host tensor); one collective, so no rank hangs on a failed peer."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    return bool(all_reduce(flag, "min")[0])


def max_flags(values: list[int]) -> list[int]:
    """Element-wise MAX of small host integers over ranks (stop requests)."""
    return all_reduce(torch.tensor(values, dtype=torch.int64), "max").tolist()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """`src`'s picklable object on every rank."""
    if not is_dist() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not is_dist():
        return [obj]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def gather_object(obj, dst: int = 0) -> list | None:
    """Every rank's object, in rank order, on `dst` (None elsewhere)."""
    if not is_dist() or dist.get_world_size() == 1:
        return [obj]
    parts = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, parts, dst=dst)
    return parts


def all_gather_autograd(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) rows of every rank concatenated, differentiable: the backward sums each rank's gradient into its
    rows (KoLeo over the global batch)."""
    if not is_dist() or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


# -- once-jobs on several nodes -----------------------------------------------------------------------------------
def on_each_node(job, error_types: tuple[type[BaseException], ...]):
    """Run `job()` on local rank 0 of every node; every rank raises the first failure (type of error_types) or
    returns None. For node-local state (data shards copied to each node, caches), checked where it is read."""
    error = None
    if local_rank() == 0:
        try:
            job()
        except error_types as e:
            error = (type(e), f"{e} (node of rank {world()[0]}, {socket.gethostname()})")
    failures = [e for e in all_gather_object(error) if e is not None]
    if failures:
        kind, message = failures[0]
        raise kind(message)


def check_shared_dir(path: str | Path, wait_s: float = 10.0, error: type[Exception] = SharedDirError) -> None:
    """Global rank 0 writes a probe file in `path`; every rank must read it back (checkpoints, `latest`, the run
    records live there and are written by rank 0 only). Raises `error` naming the path and the blind ranks."""
    rank, size = world()
    if size == 1:
        return
    token = broadcast_object(uuid.uuid4().hex if rank == 0 else None)
    probe = Path(path) / f".shared_fs_probe.{token}"
    if rank == 0:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    barrier()
    sees = _reads_back(probe, token, wait_s)
    blind = [(r, host) for r, (ok, host) in enumerate(all_gather_object((sees, socket.gethostname()))) if not ok]
    barrier()
    if rank == 0:
        probe.unlink(missing_ok=True)
    if blind:
        raise error(
            f"{probe.parent} is not shared by every node: rank 0 wrote {probe.name} there but rank(s) "
            f"{', '.join(f'{r} ({host})' for r, host in blind)} cannot read it. --output-dir must be on a file "
            "system all nodes mount (checkpoints and `latest` are written by rank 0 and read by every rank)"
        )


def _reads_back(probe: Path, token: str, wait_s: float) -> bool:
    """NFS attribute caches can lag a few seconds: poll before declaring the file invisible."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if probe.read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def clear_stale_jit_lock(op_name: str, max_age_s: float = 300.0) -> bool:
    """Remove a torch JIT-extension build lock left by a killed process; returns True when one was removed.

    torch.utils.cpp_extension holds `<build dir>/lock` while it (re)builds or merely loads an op (well under a
    second when up to date, ~30 s for a real build); a process SIGKILLed inside that window leaves the file behind
    and every later launch then polls for it forever. A lock older than max_age_s has no live owner."""
    import logging

    try:
        from torch.utils.cpp_extension import _get_build_directory

        lock = Path(_get_build_directory(op_name, verbose=False)) / "lock"
        age = time.time() - lock.stat().st_mtime
    except (ImportError, OSError, RuntimeError):
        return False
    if age < max_age_s:
        return False
    lock.unlink(missing_ok=True)
    logging.getLogger("pipeline.train").warning(
        "removed a stale JIT build lock %s (%.0f s old, left by a killed process)", lock, age
    )
    return True


# -- RNG state ----------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- host <-> device ----------------------------------------------------------------------------------------------
def pin(batch: dict) -> dict:
    """Page-locked copies of a batch's tensors (so the H2D copy can be asynchronous); other values unchanged."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to `device` without blocking the host (asynchronous from pinned memory on CUDA; no-op on CPU)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


SYNC_WARNING = "called a synchronizing CUDA operation"  # torch.cuda.set_sync_debug_mode("warn")'s message


@contextlib.contextmanager
def count_syncs(enabled: bool):
    """Count host-device synchronisations inside the block (CUDA sync debug mode "warn"); yields a one-item list
    holding the count when the block ends (None when disabled or not on CUDA)."""
    box = [None]
    if not (enabled and torch.cuda.is_available()):
        yield box
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield box
        finally:
            torch.cuda.set_sync_debug_mode("default")
    box[0] = sum(SYNC_WARNING in str(w.message) for w in caught)
    for w in caught:  # the others were only caught along: pass them on
        if SYNC_WARNING not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
