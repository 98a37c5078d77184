"""Two nodes x one process, simulated on localhost: two `torchrun --nnodes 2 --node_rank {0,1}` launchers, each with
its own node-local directory (its copy of the prepared data, TMPDIR) and one shared --output-dir. The job trains,
checkpoints, is SIGKILLed whole (both launchers) at a random step and relaunched: it resumes from the last complete
checkpoint and recomputes the killed steps with identical losses.

What it guards: LOCAL_RANK is 0 on both nodes, so node-local once-jobs (shard verification, the JIT-lock clean-up)
run on each node; rank 0 alone writes checkpoints and `latest`, which rank 1 must find (the start-up shared-dir
check); collectives cross "nodes" over TCP (gloo).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from data_prep.lengths import write_sampling_files
from pipeline.training.metrics import read_metrics
from tests.pipeline.conftest import ROOT, free_port, run_env, train_cmd
from tests.pipeline.test_kill_resume import COMPARED, marked, wait_for_step

STEPS = 30  # tiny steps take ~0.1 s: enough of them that the kill lands mid-run
FLAGS = ("--max-steps", str(STEPS), "--save-every", "4", "--valid-every", "-1")


def start_node(node: int, prepared: Path, local: Path, out: Path, port: int) -> subprocess.Popen:
    """One node's launcher (its own process group), data read from its local copy, log in local/node.log."""
    data = local / "data"
    if not data.exists():  # a node-local copy of a prepared dataset, with the sampling files data_prep writes
        shutil.copytree(prepared, data, ignore=shutil.ignore_patterns("sampling"))
        write_sampling_files(data, "train")
    (local / "tmp").mkdir(parents=True, exist_ok=True)
    launcher = [str(ROOT / ".venv/bin/torchrun"), "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    log = open(local / "node.log", "a")  # noqa: SIM115 - closed by kill_group / finish
    env = {**run_env(), "TMPDIR": str(local / "tmp")}
    cmd = train_cmd(data, out, *FLAGS, launcher=launcher)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


def start_job(prepared: Path, tmp: Path, out: Path) -> list[subprocess.Popen]:
    port = free_port()
    return [start_node(node, prepared, tmp / f"node{node}", out, port) for node in (0, 1)]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process below it (torchrun starts its workers in sessions of their own, so the
    launcher's process group alone would leave them running)."""
    try:
        victims = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        victims = []
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.log.close()


def finish(procs: list[subprocess.Popen], tmp: Path, timeout: float = 400.0) -> None:
    deadline = time.monotonic() + timeout
    for node, proc in enumerate(procs):
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        proc.log.close()
        log = (tmp / f"node{node}" / "node.log").read_text()
        assert code == 0, f"node {node} exited {code}:\n{log[-4000:]}"


def test_two_nodes_train_checkpoint_killed_and_resume_identically(prepared, tmp_path):
    out = tmp_path / "shared" / "run"
    kill_after = random.randint(6, 14)
    note = f"2 nodes killed after step {kill_after}"
    procs = start_job(prepared, tmp_path, out)
    try:
        wait_for_step(out, kill_after, procs[0], timeout=400)
    finally:
        for proc in procs:
            kill_tree(proc)
    before = {r["step"]: r for r in read_metrics(out)}
    tag = marked(out)
    assert tag is not None, f"{note}: no complete checkpoint"
    procs = start_job(prepared, tmp_path, out)
    finish(procs, tmp_path)
    log0 = (tmp_path / "node0" / "node.log").read_text()
    assert f"resumed from {out / 'checkpoints' / tag}" in log0, note
    after = read_metrics(out)
    assert [r["step"] for r in after] == list(range(1, STEPS + 1)), note
    saved_step = int(tag.removeprefix("step_"))
    recomputed = [r for r in after if r["step"] > saved_step and r["step"] in before]
    assert recomputed, f"{note}: no step was recomputed after {tag}"
    for r in after:
        if r["step"] in before:
            for key in COMPARED:
                assert r[key] == before[r["step"]][key], f"{note}: step {r['step']} {key}"
    assert all(r["pairs"] == 16 for r in after)  # 8 pairs x 1 micro batch x 2 ranks
    ckpt = out / "checkpoints" / f"step_{STEPS:08d}"
    assert {p.name for p in ckpt.glob("client_rank*.pt")} == {"client_rank00000.pt", "client_rank00001.pt"}
    assert not list(out.glob(".shared_fs_probe.*"))
