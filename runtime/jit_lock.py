"""A torch JIT-extension build lock left by a killed process, found and removed."""

from __future__ import annotations

import logging
import time
from pathlib import Path


def clear_stale_jit_lock(op_name: str, max_age_s: float = 300.0) -> bool:
    """Remove a torch JIT-extension build lock left by a killed process; returns True when one was removed.

    torch.utils.cpp_extension holds `<build dir>/lock` while it (re)builds or merely loads an op (well under a
    second when up to date, ~30 s for a real build); a process SIGKILLed inside that window leaves the file behind
    and every later launch then polls for it forever. A lock older than max_age_s has no live owner."""
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
