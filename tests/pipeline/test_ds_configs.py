"""The GPU DeepSpeed JSONs select what the GPU path needs, and DeepSpeed 0.19.8 builds an engine from them that
really uses it: torch's fused AdamW (no FusedAdam JIT build with nvcc on a fresh node), gradients reduced and
accumulated in fp32 under bf16 weights, buckets small enough that `large` has several to overlap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.pipeline.conftest import ROOT, run_env

GPU_CONFIGS = ("zero2_bf16.json", "zero2_offload.json")
LARGE_PARAMS = 560_000_000  # xlm-roberta-large + the 6-layer head, about


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_configs_reduce_and_accumulate_in_fp32(name):
    ds = json.loads((ROOT / "ds_configs" / name).read_text())
    assert ds["bf16"]["enabled"] and ds["communication_data_type"] == "fp32"
    assert ds["data_types"]["grad_accum_dtype"] == "fp32"
    assert LARGE_PARAMS / ds["zero_optimization"]["reduce_bucket_size"] > 3  # buckets to overlap with backward


def test_bf16_config_uses_torch_fused_adamw():
    params = json.loads((ROOT / "ds_configs" / "zero2_bf16.json").read_text())["optimizer"]["params"]
    assert params["torch_adam"] is True and params["fused"] is True


# One rank, gloo, DeepSpeed's CPU accelerator (bf16 works there): build the engine from the shipped JSON through
# the project's own resolution, run one optimizer step of two micro batches, report what DeepSpeed chose.
PROBE = r"""
import json, os, sys, torch
from pipeline.config import load_ds_config, parse_args, resolve_ds_config
from pipeline.training.engine import build_engine
from pipeline.training.schedule import Schedule
from runtime.collectives import init_training
path = sys.argv[1]
init_training(timeout_minutes=5)  # a 1-rank gloo group, as `python pipeline/train.py` forms it
cfg = parse_args(["--data", "d", "--output-dir", "o", "--ds-config", path, "--batch-pairs", "4", "--max-steps", "2"])
ds = resolve_ds_config(cfg, load_ds_config(path), world_size=1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
engine = build_engine(cfg, model, ds, Schedule(2))
before = [p.detach().float().clone() for p in engine.module.parameters()]
for _ in range(ds["gradient_accumulation_steps"]):
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    loss = engine(x).float().pow(2).mean()
    engine.backward(loss)
    engine.step()
opt = engine.optimizer.optimizer
moved = any(not torch.equal(b, p.detach().float()) for b, p in zip(before, engine.module.parameters()))
param_dtype = next(engine.module.parameters()).dtype
print(json.dumps({"optimizer": type(opt).__module__ + "." + type(opt).__name__,
                  "fused": bool(opt.defaults.get("fused")), "param_dtype": str(param_dtype),
                  "comm": str(engine.communication_data_type),
                  "accum": str(engine.optimizer.gradient_accumulation_dtype), "moved": moved}))
"""


def test_bf16_config_builds_a_torch_fused_fp32_reducing_engine():
    cmd = [sys.executable, "-c", PROBE, str(ROOT / "ds_configs" / "zero2_bf16.json")]
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["optimizer"] == "torch.optim.adamw.AdamW" and report["fused"]
    assert report["param_dtype"] == "torch.bfloat16"
    assert report["comm"] == "torch.float32" and report["accum"] == "torch.float32"
    assert report["moved"]
