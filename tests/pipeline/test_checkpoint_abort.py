"""A checkpoint save that fails inside DeepSpeed on one rank of two stops the whole job with the error, instead of
that rank waiting in the gloo verdict while its peer waits for it inside DeepSpeed's collectives (a hang until the
process-group timeout). The fault is injected on rank 1 only; `latest` keeps the previous complete checkpoint."""

import os
import signal
import subprocess
import sys

import pytest

from tests.pipeline.conftest import ROOT, free_port, run_env

DRIVER = r"""
import errno, sys, torch
from pipeline.config import load_ds_config, parse_args, resolve_ds_config
from pipeline.training.checkpoint import CheckpointError, CheckpointManager
from pipeline.training.engine import build_engine
from pipeline.training.schedule import Schedule
from runtime.collectives import init_training
out, config = sys.argv[1], "ds_configs/zero2_cpu_fp32.json"
rank, world = init_training(timeout_minutes=10)
cfg = parse_args(["--data", "d", "--output-dir", out, "--ds-config", config, "--batch-pairs", "2", "--max-steps", "2"])
ds = resolve_ds_config(cfg, load_ds_config(config), world_size=world)
torch.manual_seed(0)
engine = build_engine(cfg, torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)), ds, Schedule(2))
engine.backward(engine(torch.randn(2, 8)).pow(2).mean())
engine.step()
mgr = CheckpointManager(out, rank=rank)
mgr.save(engine, 1, {"step": 1})
if rank == 1:
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error (injected)")
    engine.save_checkpoint = broken
try:
    mgr.save(engine, 2, {"step": 2})
except CheckpointError as e:
    print(f"RANK {rank} ERROR {e}", flush=True)
    sys.exit(1)
print(f"RANK {rank} SAVED", flush=True)
"""


@pytest.mark.faults
def test_a_save_failing_on_one_rank_stops_every_rank_with_the_error(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "--no-python", sys.executable, "-c", DRIVER, str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        text, _ = proc.communicate(timeout=240)  # a hang lasts until the process-group timeout (10 min here)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        raise
    assert proc.returncode != 0, text[-3000:]
    said = [line for line in text.splitlines() if line.startswith("RANK ")]
    assert any(line.startswith("RANK 1 ERROR rank 1: saving") for line in said), text[-3000:]
    assert "Input/output error (injected)" in text and "step_00000001 is intact" in text
    assert not any(line.endswith("SAVED") for line in said)  # rank 0 did not go on as if the save had worked
    assert (out / "checkpoints" / "latest").read_text() == "step_00000001"
