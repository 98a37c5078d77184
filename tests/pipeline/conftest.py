"""Shared fixtures of the training tests: one tiny prepared dataset (contract 1) and one finished 1-rank run.

The dataset is pipeline/data/synthetic.py's: a synthetic "language pair" with a word-level tokenizer trained on the
spot, saved as data_prep saves it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.synthetic import make_prepared

ROOT = Path(__file__).resolve().parents[2]
# A model small enough for seconds-long CPU runs; flags of pipeline/config.py (ModelConfig fields).
TINY_MODEL_FLAGS = [
    "--model",
    "tiny",
    "--num-layers",
    "2",
    "--hidden-size",
    "64",
    "--num-heads",
    "2",
    "--ffn-size",
    "128",
    "--head-layers",
    "1",
    "--head-heads",
    "2",
    "--head-ffn",
    "128",
]


def train_cmd(data: Path, out: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    """Command line of a tiny CPU run (plain python unless a launcher prefix is given)."""
    args = [
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--ds-config",
        str(ROOT / "ds_configs/zero2_cpu_fp32.json"),
        "--batch-pairs",
        "8",
        "--grad-accum",
        "1",
        "--wandb",
        "off",
        "--log-every",
        "1",
        "--verify",
        "size",
        *TINY_MODEL_FLAGS,
        *extra,
    ]
    return (launcher or [sys.executable]) + [str(ROOT / "pipeline/train.py"), *args]


def free_port() -> int:
    """A free TCP port for a launcher's --master_port (fixed ports collide with parallel runs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_launcher(n: int = 2) -> list[str]:
    return [str(ROOT / ".venv/bin/deepspeed"), "--num_gpus", str(n), "--master_port", str(free_port())]


def run_env() -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DS_ACCELERATOR="cpu",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
    )
    # TRITON_INTERPRET (set by `make test` for tests/kernels) would send KoLeo through the Triton interpreter inside
    # every training step; a CPU training run never has it, and the kernels are tested on their own.
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET"):
        env.pop(key, None)
    return env


def run_train(cmd: list[str], timeout: int = 300, check: bool = True, **env) -> subprocess.CompletedProcess:
    """Run a training command to the end (extra keyword arguments are environment variables)."""
    proc = subprocess.run(cmd, cwd=ROOT, env={**run_env(), **env}, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A tiny prepared dataset directory shared by every pipeline test (treat as read-only; copy to modify)."""
    return make_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def tiny_run(prepared, tmp_path_factory) -> Path:
    """A finished 8-step 1-rank run, checkpoint every 2 steps (the reference of resume and export tests)."""
    out = tmp_path_factory.mktemp("run") / "uninterrupted"
    run_train(train_cmd(prepared, out, "--max-steps", "8", "--save-every", "2", "--valid-every", "4"))
    return out
