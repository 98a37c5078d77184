"""Stopping a build with SIGTERM as with Ctrl-C.

The default SIGTERM action ends the command's process alone: the engine's forkserver, its pool workers and its
manager process are not its children or outlive it, and keep running (and writing into the work directory) after
it is gone. Raised as an exception instead, the signal unwinds the engine like Ctrl-C does: the pool terminates
its workers and the manager shuts down, and the work directory is kept for the same command to resume."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT received while a build ran; `signum` the signal (exit with 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def report_stop(out, stopped: Stopped) -> int:
    """Say that the build at `out` was stopped and how to resume it; the exit status, 128 + the signal."""
    print(f"{out}: stopped by {stopped}; the same command resumes the build", file=sys.stderr)
    return 128 + stopped.signum


def _stop(signum: int, _frame) -> None:
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Stopped` inside the block (main thread only); the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
