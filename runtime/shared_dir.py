"""Proof at start-up that every node sees what global rank 0 writes to the output directory."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

from runtime.collectives import all_gather_object, barrier, broadcast_object, world


class SharedDirError(RuntimeError):
    """A node does not see the file global rank 0 wrote to the (supposedly shared) output directory."""


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
