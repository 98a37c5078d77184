"""`make train` picks the accelerator from what is present (nothing forces the CPU on a GPU node) and says which:
the recipe run with a stand-in Python (what torch would detect) and a stand-in launcher that prints its command."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _make_train(tmp_path, detected: str, **env) -> str:
    fake_py = tmp_path / "python"
    fake_py.write_text(f"#!/bin/sh\necho {detected}\n")  # stands for: torch.cuda.is_available() ? cuda : cpu
    launcher = tmp_path / "deepspeed"
    launcher.write_text('#!/bin/sh\necho "launch DS_ACCELERATOR=$DS_ACCELERATOR $*"\n')
    stamp = tmp_path / "installed"
    stamp.touch()  # newer than requirements.txt: `setup` is up to date
    for f in (fake_py, launcher):
        f.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "MAKEFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "-s", "train", f"PY={fake_py}", f"DEEPSPEED={launcher}", f"VENV_STAMP={stamp}"],
                          cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    ("detected", "env", "line", "accel"),
    [
        ("cuda", {}, "accelerator cuda (detected", "cuda"),
        ("cpu", {}, "accelerator cpu (detected", "cpu"),
        ("cuda", {"DS_ACCELERATOR": "cpu"}, "accelerator cpu (from DS_ACCELERATOR", "cpu"),
    ],
)
def test_make_train_picks_the_accelerator_present(tmp_path, detected, env, line, accel):
    out = _make_train(tmp_path, detected, **env)
    first, command = out.splitlines()[0], out.splitlines()[-1]
    assert first.startswith("make train: ") and line in first
    assert command.startswith(f"launch DS_ACCELERATOR={accel} ") and "pipeline/train.py" in command
    assert ("--num_gpus 2" in command) == (accel == "cpu")  # 2 CPU processes; on GPUs every visible one
    config = "zero2_cpu_fp32.json" if accel == "cpu" else "zero2_bf16.json"
    assert f"--ds-config ds_configs/{config}" in command
