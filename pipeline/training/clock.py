"""Wall-clock time of a run across its launches: what earlier launches spent (from the checkpoint) plus this one's."""

from __future__ import annotations

import time


class RunClock:
    """`start()` when the launch begins training; `elapsed()` is the run's total, `launch()` this launch's."""

    def __init__(self, before: float = 0.0):
        self.before = before  # seconds spent by earlier launches (the checkpoint's elapsed_s)
        self.t0 = time.time()

    def start(self) -> None:
        self.t0 = time.time()

    def resume_from(self, before: float) -> None:
        self.before = before

    def launch(self) -> float:
        """Seconds since this launch started training (the --max-minutes budget counts these)."""
        return time.time() - self.t0

    def elapsed(self) -> float:
        """Seconds of the whole run, earlier launches included (metrics' and checkpoints' elapsed_s)."""
        return self.before + self.launch()
