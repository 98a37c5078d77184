"""The output-directory lock: one training per --output-dir.

`OUTPUT/.lock` ({host, pid, start time}) is taken by rank 0 with an exclusive create before anything is written; a
second launch into the same directory is refused naming the holder. A lock whose pid is dead on this host
(a SIGKILLed run) is stale and taken over; a lock of another host is never guessed stale: the message says how to
remove it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path

from runtime.collectives import broadcast_object

log = logging.getLogger("pipeline.train")
LOCK = ".lock"


class OutputLockedError(RuntimeError):
    """Another launch holds the output directory (or a lock of another host that cannot be judged stale)."""


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (/proc/PID/stat field 22), None when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, starttime field 22
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, start: str | None) -> bool:
    """Is the process that wrote the lock still running? A reused pid (another start time) is not it."""
    if Path("/proc/self/stat").is_file():
        now = _proc_start(pid)
        return now is not None and (not start or not now or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """`OUTPUT/.lock`: one training per output directory (see the module docstring). `acquire` raises OutputLockedError
    naming the holder; `release` (also at interpreter exit) removes the lock if it is still this process's."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK
        self.held = False

    def _mine(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _proc_start(os.getpid()) or "",
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self._mine()
        tmp = self.path.with_name(f"{LOCK}.{mine['host']}.{mine['pid']}")
        tmp.write_text(json.dumps(mine) + "\n")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic, fails if the lock exists: readers never see half a lock
                    self.held = True
                    atexit.register(self.release)
                    return
                except FileExistsError:
                    self._clear_if_stale()
            raise OutputLockedError(f"{self.path}: could not take the lock (another launch keeps taking it)")
        finally:
            tmp.unlink(missing_ok=True)

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return {}

    def _clear_if_stale(self) -> None:
        """Remove a lock left by a dead process of this host; raise OutputLockedError for a live or foreign holder."""
        held = self.holder()
        if held is None:
            return  # released meanwhile: try again
        who = (
            f"pid {held.get('pid')} on host {held.get('host')}, since {held.get('time')}"
            if held
            else "an unreadable lock"
        )
        if held and held.get("host") == socket.gethostname():
            if not _alive(int(held.get("pid", -1)), held.get("start")):
                log.warning("%s: removing a stale lock of %s (that process is gone)", self.path, who)
                self.path.unlink(missing_ok=True)
                return
            raise OutputLockedError(
                f"{self.path}: another training is running in this --output-dir ({who}); wait for it to end, "
                "stop it, or use another --output-dir. Nothing was changed on disk"
            )
        raise OutputLockedError(
            f"{self.path}: the output directory is locked by {who}; if that process is truly gone (check on "
            f"that host), remove {self.path} and relaunch. Nothing was changed on disk"
        )

    def release(self) -> None:
        held = self.holder() or {}
        if self.held and (held.get("host"), held.get("pid")) == (socket.gethostname(), os.getpid()):
            self.path.unlink(missing_ok=True)
        self.held = False


def take_output_lock(output_dir: str | Path, rank: int) -> OutputLock | None:
    """Rank 0 takes OUTPUT/.lock; a refusal is raised on every rank (OutputLockedError). -> the lock on rank 0."""
    lock, error = None, None
    if rank == 0:
        lock = OutputLock(output_dir)
        try:
            lock.acquire()
        except OutputLockedError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        raise OutputLockedError(error)
    return lock
