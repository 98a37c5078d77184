"""Kill and resume: a relaunch with the same command continues from the last complete checkpoint and, on CPU fp32,
logs the same losses step for step as the uninterrupted run (the `tiny_run` fixture: 8 steps, checkpoints every 2).
SIGKILL at random steps, of one rank or of a 2-rank job, lives in test_kill_resume.py; here: a kill between the
checkpoint's files and its commit, a SIGTERM (preemption notice), relaunching a finished run, --no-resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap

import pytest

from pipeline.training.metrics import read_metrics
from tests.pipeline.conftest import ROOT, run_env, run_train, train_cmd

SAME_ARGS = ("--max-steps", "8", "--save-every", "2", "--valid-every", "4")
COMPARED = ("step", "loss", "mlm_loss", "cls_loss", "koleo_loss", "lr", "grad_norm", "n_masked", "epoch")


def _history(out, split="train"):
    return [{k: r[k] for k in COMPARED if k in r} for r in read_metrics(out, split)]


def _assert_same_history(run, reference):
    assert _history(run) == _history(reference)  # exact: CPU fp32 is deterministic given the restored state
    assert _history(run, "valid") == _history(reference, "valid")


def _run_until(cmd: list[str], pattern: str, sig: int = signal.SIGKILL) -> subprocess.Popen:
    """Start cmd; SIGKILL its process group when a line containing pattern appears on stderr; -> the dead process."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=run_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if pattern in line:
            os.killpg(proc.pid, sig)  # the whole session: launcher and ranks, as a node failure would
            break
    if sig != signal.SIGKILL:  # a graceful stop: read its last words (the stop message) up to its exit
        seen.extend(proc.stderr)
    proc.stderr.close()
    proc.wait(timeout=120)
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 0
    assert proc.returncode == expected, f"{pattern!r} / exit {proc.returncode}:\n{''.join(seen[-30:])}"
    proc.log = "".join(seen)
    return proc


def test_sigterm_checkpoints_at_the_next_step_and_exits_cleanly(prepared, tiny_run, tmp_path):
    """A scheduler's preemption notice: finish the step, checkpoint it (no validation), exit 0; relaunch resumes."""
    out = tmp_path / "preempted"
    cmd = train_cmd(prepared, out, *SAME_ARGS)
    proc = _run_until(cmd, "step 3/8", sig=signal.SIGTERM)
    assert "stopping on signal SIGTERM" in proc.log
    stopped_at = max(r["step"] for r in read_metrics(out))
    assert stopped_at < 8 and (out / "checkpoints" / "latest").read_text() == f"step_{stopped_at:08d}"
    run_train(cmd)
    _assert_same_history(out, tiny_run)


KILL_DURING_COMMIT = textwrap.dedent("""
    import sys, time
    from pipeline.training import checkpoint
    commit = checkpoint.CheckpointManager._commit
    def slow_commit(self, tag, step):
        if step == 6:  # DeepSpeed's files and the client states are written; COMPLETE.json and `latest` are not
            print("COMMITTING step 6", file=sys.stderr, flush=True)
            time.sleep(600)
        commit(self, tag, step)
    checkpoint.CheckpointManager._commit = slow_commit
    from pipeline.train import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_while_writing_a_checkpoint_never_marks_it(prepared, tiny_run, tmp_path):
    out = tmp_path / "killed_in_save"
    cmd = train_cmd(prepared, out, *SAME_ARGS)
    _run_until([cmd[0], "-c", KILL_DURING_COMMIT] + cmd[2:], "COMMITTING step 6")
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000004"
    assert (ckpts / "step_00000006" / "mp_rank_00_model_states.pt").is_file()
    assert not (ckpts / "step_00000006" / "COMPLETE.json").exists()
    proc = run_train(cmd)
    assert "step_00000006 is not usable" in proc.stderr and "resumed from" in proc.stderr
    assert "step_00000004" in proc.stderr.split("resumed from", 1)[1].splitlines()[0]
    _assert_same_history(out, tiny_run)


@pytest.mark.slow  # make test: test_relaunch.py relaunches finished runs (longer, changed) and --no-resume
def test_relaunch_of_a_finished_run_does_nothing_and_no_resume_starts_over(prepared, tiny_run, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(tiny_run, out)
    proc = run_train(train_cmd(prepared, out, *SAME_ARGS))
    assert "already holds a finished run" in proc.stderr
    _assert_same_history(out, tiny_run)
    run_train(train_cmd(prepared, out, "--max-steps", "3", "--save-every", "0", "--valid-every", "-1", "--no-resume"))
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert (out / "checkpoints" / "latest").read_text() == "step_00000003"
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_00000003"]  # the old run's: set aside
    assert len(list(out.glob("replaced-*/checkpoints/step_00000008"))) == 1  # the whole old run, in one folder
    assert read_metrics(out)[0]["loss"] == read_metrics(tiny_run)[0]["loss"]  # same seed, same first step
