"""The process group and every collective of training, validation, checkpointing and evaluation, in one place.

Process group: one process per accelerator. The accelerator is selected (`set_device(LOCAL_RANK)`, runtime/devices.py)
*before* the group exists, and the group has two backends, `cpu:gloo,cuda:nccl` (the accelerator's own backend for its
tensors):
- control-plane collectives (stop flags, checkpoint verdicts, object broadcasts, file-hash gathers) run on host
  tensors over gloo, so they never touch the device: no stream synchronisation, no staging copy, no dependence on the
  current device for pickled objects;
- data-plane collectives (the step's metric sums, validation sums; DeepSpeed's own gradient reduction) run on device
  tensors over NCCL, queued on the stream like any kernel: nothing waits until the values are read.
A device-only group would force every host flag through an H2D copy, NCCL and a D2H read: one sync per step for
the trainer's stop check alone. On a CPU-only machine the group is plain gloo, so the CPU tests run the same code paths.

Multi-node "once" jobs: work on node-local state runs on each node's local rank 0 (`on_each_node`); what global rank
0 writes lives on the shared file system (runtime/shared_dir.py proves at start-up that every node sees it).

tests/pipeline/test_distributed.py fails when any other module calls a torch.distributed collective directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from runtime.devices import backend_for, default_device_type, local_rank, select_device
from runtime.ds_ops import cpu_op_build, use_all_gather_single
from runtime.jit_lock import clear_stale_jit_lock


# -- process group ------------------------------------------------------------------------------------------------
def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size) of this process; from the launcher's environment before the group exists, (0, 1) alone."""
    if is_dist():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_world_size() -> int:
    """Processes on this node (torchrun: LOCAL_WORLD_SIZE, deepspeed: LOCAL_SIZE); the world size otherwise."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or world()[1])


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
    backend = backend_for(device_type, accel.communication_backend_name())
    if int(os.environ.get("RANK", 0)) == 0:
        logging.getLogger(__name__).info(accelerator_line(device_type, backend, world()[1]))
    if not is_dist():
        quiet_build = cpu_op_build(int(os.environ.get("RANK", 0)), verbose) if device_type == "cpu" else None
        with quiet_build or contextlib.nullcontext():
            deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))
        use_all_gather_single()
    cap_cpu_threads()
    return world()


def accelerator_line(device_type: str, backend: str, world_size: int) -> str:
    """The start-up line naming the accelerator a run trains on and where the choice came from."""
    chosen = os.environ.get("DS_ACCELERATOR")
    how = f"DS_ACCELERATOR={chosen}" if chosen else "detected by DeepSpeed: no DS_ACCELERATOR set"
    return f"accelerator {device_type} ({how}); {world_size} process(es); process group {backend}"


def cap_cpu_threads() -> int | None:
    """torch's CPU threads of this rank = the cores it may run on / the ranks on this node, unless OMP_NUM_THREADS
    is set (then torch follows it). N ranks each defaulting to every core oversubscribe the host N-fold: the whole
    step on a CPU, collation and masking on a GPU node with 8 ranks. Returns the count set, or None."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // local_world_size())
    torch.set_num_threads(threads)
    return threads


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


class _AllGatherRows(torch.autograd.Function):
    """Forward: every rank's (B, ...) rows in rank order (one all_gather). Backward: the gradient of the gathered
    rows summed over ranks (one all_reduce, gloo and NCCL alike), this rank's slice returned."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_autograd(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) rows of every rank concatenated (every rank the same B), differentiable: the backward sums each
    rank's gradient into its rows (KoLeo over the global batch). Written here instead of
    torch.distributed.nn.functional.all_gather, which torch deprecates."""
    if not is_dist() or dist.get_world_size() == 1:
        return x
    return _AllGatherRows.apply(x)


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
