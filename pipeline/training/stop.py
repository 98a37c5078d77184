"""When a run leaves its loop early: a stop signal (a scheduler's preemption notice) or the wall-clock budget.

Every rank polls once per step with one MAX all-reduce of host integers (gloo: no device sync), so all ranks leave
the loop at the same step and checkpoint it.
"""

from __future__ import annotations

import signal

from pipeline.training.clock import RunClock
from pipeline.training.metrics import log
from runtime import collectives

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequests:
    """`install()` catches SIGTERM/SIGUSR1 on this rank; `poll(step)` says, the same on every rank, whether to stop:
    "signal" (any rank got one), "budget" (rank 0's --max-minutes spent in this launch) or None."""

    def __init__(self, clock: RunClock, max_minutes: float, rank: int):
        self.clock, self.max_minutes, self.rank = clock, max_minutes, rank
        self.signum = 0

    def install(self) -> None:
        self.signum = 0
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signum = signum

    def poll(self, step: int) -> str | None:
        budget_s = self.max_minutes * 60
        over = self.rank == 0 and budget_s > 0 and self.clock.launch() > budget_s
        over, signum = collectives.max_flags([int(over), self.signum])
        if over and self.rank == 0:
            log.info("wall-clock budget --max-minutes %s spent at step %d", self.max_minutes, step)
        if signum and self.rank == 0:
            name = signal.Signals(signum).name
            log.info("stopping on signal %s at step %d: checkpointing, relaunch to resume", name, step)
        return "signal" if signum else "budget" if over else None
