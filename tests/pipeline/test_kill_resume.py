"""Kill the training with SIGKILL at a random point, relaunch the same command: it resumes from the last complete
checkpoint and, on CPU fp32, its losses match an uninterrupted run step for step.

The kill point is drawn from the test's seeded `random` (tests/conftest.py seeds it per test id, so a failure
reproduces); it is printed in every assertion message. The uninterrupted reference of the 1-process tests is the
session's `tiny_run` (tests/pipeline/conftest.py: 8 steps, checkpoint every 2, validation every 4): the killed run uses
the very same command line with another --output-dir. The `faults` variants (make test-faults) kill the 2-process
DeepSpeed launch (whole process group, or one rank), kill inside a checkpoint save, and kill repeatedly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pipeline.training.metrics import read_metrics
from tests.pipeline.conftest import ROOT, run_env, run_train, train_cmd

TINY_RUN_FLAGS = ("--max-steps", "8", "--save-every", "2", "--valid-every", "4")  # the tiny_run fixture's flags
COMPARED = ("loss", "mlm_loss", "cls_loss", "koleo_loss", "lr", "grad_norm", "n_masked", "tokens", "pairs")
VALID_COMPARED = ("loss", "mlm_loss", "cls_loss", "koleo_loss", "acc_src2trg", "acc_trg2src")


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    """Block until rank 0 has logged optimizer step `step` to out/metrics.jsonl (or fail if the run ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["step"] >= step for r in _records(out)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before step {step}; log: {out}.log")
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout:.0f} s; log: {out}.log")


def _records(out: Path) -> list[dict]:
    try:
        return read_metrics(out)
    except (json.JSONDecodeError, FileNotFoundError):  # a line being written right now
        return []


def start(cmd: list[str], out: Path) -> subprocess.Popen:
    """Launch in a new session (its own process group), output to out.log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(f"{out}.log", "a")  # noqa: SIM115 - closed when the process is reaped (see kill_group)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and everything it started (a power cut / OOM kill of the whole job)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    proc.log.close()


def marked(out: Path) -> str | None:
    path = out / "checkpoints" / "latest"
    return path.read_text().strip() if path.is_file() else None


def assert_same_history(out: Path, ref: Path, note: str) -> None:
    """Every train (and valid) record of `out` equals the uninterrupted run's, step for step."""
    got, want = read_metrics(out), read_metrics(ref)
    assert [r["step"] for r in got] == [r["step"] for r in want], f"{note}: steps differ"
    for g, w in zip(got, want):
        for key in COMPARED:
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-7), f"{note}: step {g['step']} {key}"
    got_v, want_v = read_metrics(out, "valid"), read_metrics(ref, "valid")
    assert [r["step"] for r in got_v] == [r["step"] for r in want_v], f"{note}: validation steps differ"
    for g, w in zip(got_v, want_v):
        for key in VALID_COMPARED:
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-7), f"{note}: valid step {g['step']} {key}"


def relaunch_and_check(cmd: list[str], out: Path, ref: Path, note: str, timeout: int = 300) -> None:
    """Relaunch the same command; it must resume from the checkpoint `latest` names and end identical to ref."""
    tag = marked(out)
    proc = run_train(cmd, timeout=timeout)
    text = proc.stdout + proc.stderr
    if tag is None:
        assert "resumed from" not in text, f"{note}: resumed although no checkpoint was complete"
    else:
        expected = f"resumed from {out / 'checkpoints' / tag}"
        assert expected in text, f"{note}: did not resume from {tag}:\n{text[-3000:]}"
    assert_same_history(out, ref, note)


def test_sigkill_at_a_random_step_resumes_identically(prepared, tiny_run, tmp_path):
    """The CI case: one process, SIGKILL at a random step of 8 (checkpoints every 2), relaunch, compare."""
    kill_after = random.randint(3, 7)
    note = f"killed after step {kill_after}"
    out = tmp_path / "killed"
    cmd = train_cmd(prepared, out, *TINY_RUN_FLAGS)
    proc = start(cmd, out)
    wait_for_step(out, kill_after, proc)
    kill_group(proc)
    last_save = 2 * ((kill_after - 1) // 2)  # step k is logged before its own save, after the save of step k - 1
    assert marked(out) is not None and marked(out) >= f"step_{last_save:08d}", note
    relaunch_and_check(cmd, out, tiny_run, note)


# -- make test-faults ------------------------------------------------------------------------------------------------
DEEPSPEED = str(ROOT / ".venv/bin/deepspeed")


def ds_cmd(prepared: Path, out: Path, port: int) -> list[str]:
    return train_cmd(
        prepared,
        out,
        *TINY_RUN_FLAGS,
        "--grad-accum",
        "2",
        launcher=[DEEPSPEED, "--num_gpus", "2", "--master_port", str(port)],
    )


@pytest.fixture(scope="module")
def ds_reference(prepared, tmp_path_factory) -> Path:
    """An uninterrupted 2-process ZeRO-2 run (8 steps, micro 8 x accumulation 2 x 2 ranks)."""
    out = tmp_path_factory.mktemp("ds") / "uninterrupted"
    run_train(ds_cmd(prepared, out, 29651), timeout=600)
    return out


@pytest.mark.faults
def test_deepspeed_job_killed_whole_resumes_identically(prepared, ds_reference, tmp_path):
    kill_after = random.randint(2, 7)
    note = f"2 ranks, process group killed after step {kill_after}"
    out = tmp_path / "killed"
    cmd = ds_cmd(prepared, out, 29652)
    proc = start(cmd, out)
    wait_for_step(out, kill_after, proc)
    kill_group(proc)
    relaunch_and_check(cmd, out, ds_reference, note, timeout=600)


def _rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    """The training process of `rank` under the deepspeed launcher (launch.py passes --local_rank=N)."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if any(a.endswith("pipeline/train.py") for a in cmdline) and f"--local_rank={rank}" in cmdline:
            return child
    raise AssertionError(f"no rank {rank} process under launcher {launcher.pid}")


@pytest.mark.faults
def test_one_rank_killed_stops_the_job_and_resumes_identically(prepared, ds_reference, tmp_path):
    """SIGKILL rank 1 only: the launcher must end the job (no hang on the dead peer); a relaunch resumes."""
    kill_after = random.randint(2, 7)
    note = f"rank 1 killed after step {kill_after}"
    out = tmp_path / "killed"
    cmd = ds_cmd(prepared, out, 29653)
    proc = start(cmd, out)
    wait_for_step(out, kill_after, proc)
    _rank_process(proc, 1).send_signal(signal.SIGKILL)
    try:
        rc = proc.wait(timeout=180)
    finally:
        kill_group(proc)  # whatever the launcher left behind
    assert rc != 0, f"{note}: the launcher reported success after losing a rank"
    relaunch_and_check(cmd, out, ds_reference, note, timeout=600)


KILL_INSIDE_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pipeline.training import checkpoint
    commit, target = checkpoint.CheckpointManager._commit, os.environ["KILL_AT_TAG"]
    def dying_commit(self, tag, step):
        if tag == target:  # the DeepSpeed and client files are written, COMPLETE.json and `latest` are not
            os.kill(os.getpid(), signal.SIGKILL)
        return commit(self, tag, step)
    checkpoint.CheckpointManager._commit = dying_commit
    from pipeline.train import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.faults
def test_kill_inside_a_checkpoint_save_keeps_latest_on_the_previous(prepared, tiny_run, tmp_path):
    save_step = random.choice([4, 6])
    tag, previous = f"step_{save_step:08d}", f"step_{save_step - 2:08d}"
    note = f"killed inside the save of {tag}"
    out = tmp_path / "killed"
    cmd = train_cmd(prepared, out, *TINY_RUN_FLAGS)
    proc = subprocess.run(
        [cmd[0], "-c", KILL_INSIDE_SAVE, *cmd[2:]],
        cwd=ROOT,
        env=dict(run_env(), KILL_AT_TAG=tag),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, f"{note}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert (out / "checkpoints" / tag).is_dir() and not (out / "checkpoints" / tag / "COMPLETE.json").exists()
    assert marked(out) == previous, note
    relaunch = run_train(cmd)
    assert f"checkpoint {tag} is not usable" in relaunch.stderr, note  # the leftover is named, then redone
    assert f"resumed from {out / 'checkpoints' / previous}" in relaunch.stderr, note
    assert_same_history(out, tiny_run, note)


@pytest.mark.faults
def test_repeated_kills_at_random_points_resume_identically(prepared, tiny_run, tmp_path):
    """Three SIGKILLs at random times (seconds, not steps: possibly during start-up, a step or a save)."""
    out = tmp_path / "killed"
    cmd = train_cmd(prepared, out, *TINY_RUN_FLAGS)
    delays = [round(random.uniform(4.0, 15.0), 2) for _ in range(3)]
    for delay in delays:
        proc = start(cmd, out)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        kill_group(proc)
    relaunch_and_check(cmd, out, tiny_run, f"killed after {delays} s of each launch")
