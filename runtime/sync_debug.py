"""Host-device synchronisations counted inside a block (CUDA sync debug mode), for the no-sync-in-a-step check."""

from __future__ import annotations

import contextlib
import warnings

import torch

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
