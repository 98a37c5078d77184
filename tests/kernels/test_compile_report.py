"""The kernels compile for real GPUs: Triton's compiler + bundled ptxas to sm_80/sm_90 cubins, no GPU needed.

Runs kernels/bench/compile_report.py in a child process, since TRITON_INTERPRET=1 (set by `make test`)
turns every @triton.jit kernel of this process into an interpreter function.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _compile_report(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_DEFAULT_FP_FUSION="1")
    cmd = [sys.executable, str(ROOT / "kernels/bench/compile_report.py"), *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    rows = [line for line in result.stdout.splitlines() if line.startswith("| sm_")]
    assert rows and all(line.endswith("| ok |") for line in rows), report
    return rows


def test_hardest_configs_compile_for_h100():
    """bf16 and fp32 attention at D = 128 (the largest tiles) and the KoLeo kernels at D = 1024, sm_90."""
    rows = _compile_report("--quick", "--arch", "90")
    names = " ".join(rows)
    for kernel in ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel", "_koleo_nn_kernel"):
        assert kernel in names


@pytest.mark.slow
def test_every_config_compiles_for_a100_and_h100():
    _compile_report("--arch", "80", "90")
