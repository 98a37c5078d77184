"""pipeline/training/stop.py: a stop signal and the wall-clock budget each end the loop, a signal taking precedence."""

import os
import signal

from pipeline.training.clock import RunClock
from pipeline.training.stop import StopRequests


def test_no_request_keeps_going():
    stops = StopRequests(RunClock(), max_minutes=0, rank=0)
    stops.install()
    assert stops.poll(1) is None


def test_a_stop_signal_stops(caplog):
    stops = StopRequests(RunClock(), max_minutes=0, rank=0)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        stops.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        with caplog.at_level("INFO", logger="pipeline.train"):
            assert stops.poll(3) == "signal"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert "stopping on signal SIGUSR1 at step 3" in caplog.text


def test_the_budget_counts_this_launch_only():
    clock = RunClock(before=3600.0)  # earlier launches' hour does not count against this launch's budget
    assert StopRequests(clock, max_minutes=1, rank=0).poll(1) is None
    clock.t0 -= 61
    assert StopRequests(clock, max_minutes=1, rank=0).poll(1) == "budget"
    assert StopRequests(clock, max_minutes=1, rank=1).poll(1) is None  # rank 0's clock decides, shared by MAX
