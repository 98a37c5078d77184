"""One preparation per `--out`: a lock file beside it, naming its holder (host, pid, start time).

`.OUT.lock` is taken with an exclusive create (a hard link of a complete temporary file, so a reader never sees
half a lock) before anything on disk changes, and removed when the run ends. A second run into the same `--out`
is refused (exit 2) with the holder's host, pid and start time. A lock whose pid is dead on this host (a SIGKILLed
run) is stale and taken over; a lock of another host is never guessed stale: the message says how to clear it.

Runs over several machines (`--machines M --machine-rank R`) share one build: machine R holds `.OUT.lock.R`, and
a machine refuses to start beside a live lock of another kind of run (other flags or inputs, another machine
count). Each machine takes its own lock first and looks at the others after, so of two runs that start at the
same moment at least one is refused.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger("data_prep")


class LockError(RuntimeError):
    """`--out` is being prepared by another run; the message names the holder and what to do."""


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (/proc/PID/stat field 22); None when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, starttime field 22
    return None if fields[0] in ("Z", "X") else fields[19]


def alive(pid: int, start: str | None) -> bool:
    """Is the process that wrote a lock still running on this host? A reused pid (another start time) is not it."""
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


def lock_path(out: Path, machine_rank: int = 0) -> Path:
    name = f".{out.name}.lock" + (f".{machine_rank}" if machine_rank else "")
    return out.with_name(name)


class OutLock:
    """The lock of one machine of one run; `run` tells runs apart (the plan's fingerprint and machine count)."""

    def __init__(self, out: Path, run: str, machine_rank: int = 0):
        self.out, self.run, self.path = out, run, lock_path(out, machine_rank)
        self.held = False

    def _mine(self) -> dict:
        pid = os.getpid()
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "start": _proc_start(pid) or "",
            "time": when,
            "run": self.run,
        }

    def acquire(self) -> None:
        """Take the lock or raise LockError naming the holder; nothing else on disk is touched before this."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self._mine()
        tmp = self.path.with_name(f"{self.path.name}.{mine['host']}.{mine['pid']}")
        tmp.write_text(json.dumps(mine) + "\n")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic; fails when the lock exists
                    self.held = True
                    atexit.register(self.release)
                    break
                except FileExistsError:
                    _clear_if_stale(self.path, self.out)
            else:
                raise LockError(f"{self.path}: could not take the lock (another run keeps taking it)")
        finally:
            tmp.unlink(missing_ok=True)
        try:
            self._check_other_machines()
        except LockError:
            self.release()
            raise

    def _check_other_machines(self) -> None:
        for other in sorted(self.out.parent.glob(f".{self.out.name}.lock*")):
            if other == self.path or not _is_lock_name(other.name, self.out.name):
                continue
            held = _holder(other)
            if held is None or held.get("run") == self.run:
                continue  # released meanwhile, or a machine of this same run
            if (
                held
                and held.get("host") == socket.gethostname()
                and not alive(int(held.get("pid", -1)), held.get("start"))
            ):
                continue  # stale: its own machine rank takes it over
            raise LockError(_busy_message(other, held, self.out))

    def release(self) -> None:
        held = _holder(self.path) or {}
        if self.held and (held.get("host"), held.get("pid")) == (socket.gethostname(), os.getpid()):
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _is_lock_name(name: str, out_name: str) -> bool:
    base = f".{out_name}.lock"
    return name == base or (name.startswith(base + ".") and name[len(base) + 1 :].isdigit())


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {}


def _who(held: dict) -> str:
    return (
        f"pid {held.get('pid')} on host {held.get('host')}, since {held.get('time')}" if held else "an unreadable lock"
    )


def _busy_message(path: Path, held: dict, out: Path) -> str:
    if held and held.get("host") == socket.gethostname():
        return (
            f"{path}: --out {out} is being prepared by {_who(held)}; wait for it to end, stop it, or use another "
            "--out. Nothing was changed on disk"
        )
    return (
        f"{path}: --out {out} is locked by {_who(held)}; if that process is truly gone (check on that host), "
        f"remove {path} and run again. Nothing was changed on disk"
    )


def _clear_if_stale(path: Path, out: Path) -> None:
    """Remove a lock left by a dead process of this host; raise LockError for a live or foreign holder."""
    held = _holder(path)
    if held is None:
        return  # released meanwhile: try again
    if held and held.get("host") == socket.gethostname() and not alive(int(held.get("pid", -1)), held.get("start")):
        log.warning("%s: removing a stale lock of %s (that process is gone)", path, _who(held))
        path.unlink(missing_ok=True)
        return
    raise LockError(_busy_message(path, held, out))
