"""DeepSpeed at start-up and in its collectives, as the project's console wants it.

- `cpu_op_build(rank, verbose)`: DeepSpeed JIT-builds its CPU shared-memory op inside `init_distributed` the first
  time (about 30 s on 2 cores, more under load), silently; around that call, rank 0 says whether the op is built or
  loaded and how long it took, and DeepSpeed's own "built successfully" print (one per rank) is hidden unless
  `verbose`.
- `use_all_gather_single()`: ZeRO's all-gather goes through torch's `all_gather_single` where torch has it;
  `all_gather_into_tensor`, which DeepSpeed calls, is deprecated there (a FutureWarning per rank) and only forwards
  to it with the same arguments.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from pathlib import Path

SHM_OP = "deepspeed_shm_comm"
log = logging.getLogger("pipeline.train")


def op_built(name: str = SHM_OP) -> bool | None:
    """Whether torch's extension dir already holds the built op (None: unknown)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory
    except ImportError:
        return None
    try:
        return (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").is_file()
    except (OSError, RuntimeError):
        return None


@contextlib.contextmanager
def cpu_op_build(rank: int, verbose: bool = False):
    """Wrap DeepSpeed's `init_distributed` on CPU: say what happens (build or load) and how long it took."""
    built = op_built()
    if rank == 0:
        if built is False:
            where = os.environ.get("TORCH_EXTENSIONS_DIR", "torch's extension cache")
            log.info("building DeepSpeed's CPU communication op into %s (first run only, ~30 s or more)", where)
        else:
            log.info("loading DeepSpeed's CPU communication op")
    start = time.perf_counter()
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        yield
    if rank == 0:
        log.info("DeepSpeed's CPU op %s in %.1f s", "built" if built is False else "ready", time.perf_counter() - start)


def use_all_gather_single() -> bool:
    """Point DeepSpeed's communication backend at torch.distributed.all_gather_single; False where either is
    missing (older torch, DeepSpeed not initialised), which keeps DeepSpeed's own choice."""
    import torch.distributed as dist

    if not hasattr(dist, "all_gather_single"):
        return False
    try:
        from deepspeed.comm import comm
    except ImportError:
        return False
    backend = getattr(comm, "cdb", None)
    if backend is None or getattr(backend, "all_gather_function", None) is None:
        return False
    backend.all_gather_function = dist.all_gather_single
    return True
