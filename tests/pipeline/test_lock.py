"""The output-directory lock (pipeline/training/lock.py `OutputLock`): one training per
--output-dir.

Unit cases on the lock file (live holder, dead / zombie / reused pid, another host, release), then two real
launches into one directory: the second is refused (exit 2) naming the holder, the first ends with one record per step.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.training.lock import LOCK, OutputLock, OutputLockedError, _alive, _proc_start
from pipeline.training.metrics import read_metrics
from tests.pipeline.conftest import ROOT, run_env, run_train, train_cmd


def _write_lock(out, host: str, pid: int, start: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK).write_text(json.dumps({"host": host, "pid": pid, "start": start, "time": "then"}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_and_names_the_holder(tmp_path):
    first = OutputLock(tmp_path / "run")
    first.acquire()
    held = json.loads((tmp_path / "run" / LOCK).read_text())
    assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(OutputLockedError, match=rf"another training is running.*pid {os.getpid()} on host"):
        OutputLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run" / LOCK).exists()
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # no temp file left behind
    OutputLock(tmp_path / "run").acquire()  # free again


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    out = tmp_path / "run"
    _write_lock(out, socket.gethostname(), _dead_pid())
    lock = OutputLock(out)
    lock.acquire()
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid() and "stale lock" in caplog.text
    lock.release()


def test_zombie_and_reused_pids_are_not_alive():
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while _proc_start(zombie.pid) is not None and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.05)
    assert not _alive(zombie.pid, "")
    zombie.wait()
    me = _proc_start(os.getpid())
    assert _alive(os.getpid(), me) and not _alive(os.getpid(), str(int(me) + 1))  # same pid, another process


def test_lock_of_another_host_is_never_guessed_stale(tmp_path):
    out = tmp_path / "run"
    _write_lock(out, "node-17", _dead_pid())
    with pytest.raises(OutputLockedError, match=r"locked by pid \d+ on host node-17.*remove .*\.lock and relaunch"):
        OutputLock(out).acquire()
    assert json.loads((out / LOCK).read_text())["host"] == "node-17"


def test_release_leaves_another_process_lock_alone(tmp_path):
    lock = OutputLock(tmp_path)
    lock.acquire()
    _write_lock(tmp_path, socket.gethostname(), 1)  # someone removed ours and took it (by hand): not ours to delete
    lock.release()
    assert (tmp_path / LOCK).exists()


def test_second_launch_into_a_running_output_dir_is_refused(prepared, tmp_path):
    """Two real trainings into one --output-dir: the second exits 2 naming the first's pid and changes nothing; the
    first, stopped by SIGTERM afterwards, exits 0 with each step logged once, and releases the lock."""
    out = tmp_path / "shared"
    cmd = train_cmd(prepared, out, "--max-steps", "100000", "--save-every", "0", "--valid-every", "-1")
    first = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").is_file() or not read_metrics(out):
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended before its first step"
            time.sleep(0.1)
        second = run_train(train_cmd(prepared, out, "--max-steps", "5"), check=False)
        assert first.poll() is None, "the first run ended before the second was refused: nothing was tested"
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"another training is running in this --output-dir (pid {first.pid} on host" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)  # a preemption notice: checkpoint, release the lock, exit 0
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == list(range(1, len(steps) + 1))
    assert not (out / LOCK).exists()  # released at exit
