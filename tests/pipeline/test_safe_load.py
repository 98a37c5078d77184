"""pipeline/training/safe_load.py: the allow-list fits real DeepSpeed ZeRO-2 files (fp32 from a training run, bf16
from a one-step engine), anything else is refused by name, and numpy values round-trip exactly through `pack`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pipeline.training import safe_load as S
from tests.pipeline.conftest import ROOT, free_port, run_env

BF16_ENGINE = """
import os, sys, torch, deepspeed
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
deepspeed.init_distributed(dist_backend="gloo")
cfg = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
       "bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}
m = torch.nn.Linear(4, 4)
eng, *_ = deepspeed.initialize(model=m, model_parameters=m.parameters(), config=cfg)
eng.backward(eng(torch.randn(2, 4, dtype=torch.bfloat16)).float().sum())
eng.step()
eng.save_checkpoint(sys.argv[1], tag="t")
"""


def test_real_zero2_fp32_checkpoint_passes(tiny_run):
    ckpt = tiny_run / "checkpoints" / "step_00000008"
    files = S.deepspeed_files(ckpt)
    assert {p.name for p in files} == {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    for path in files:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        S.check_weights_only(path)  # the allow-list covers what it needs
        assert path.name.startswith("mp_rank") or unsafe  # the optimizer file really needs the allow-list
    state = S.load_trusted(ckpt / "client_rank00000.pt")  # our client state: no allow-list at all
    assert isinstance(state["rng"]["numpy"][1], np.ndarray) and state["rng"]["numpy"][1].dtype == np.uint32


def test_real_zero2_bf16_checkpoint_passes(tmp_path):
    """The GPU recipe's precision (DeepSpeed's CPU accelerator runs bf16 too): its optimizer file is named
    bf16_zero_pp_rank_... and needs the same classes."""
    script = tmp_path / "bf16.py"
    script.write_text(textwrap.dedent(BF16_ENGINE))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ck"), str(free_port())],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = S.deepspeed_files(tmp_path / "ck" / "t")
    assert any(p.name.startswith("bf16_zero_pp_rank_0") for p in files)
    S.check_deepspeed_files(tmp_path / "ck" / "t", trust=False)


def test_other_globals_are_refused_by_name(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(2), "when": np.datetime64("2024-01-01")}, path)
    with pytest.raises(S.UnsafeCheckpointError, match=r"x.pt: needs numpy.*--trust-checkpoint"):
        S.check_weights_only(path)
    with pytest.raises(S.UnsafeCheckpointError):
        S.load_trusted(path)
    assert S.load_trusted(path, trust=True)["when"] == np.datetime64("2024-01-01")


def test_damaged_file_is_a_read_error_not_a_trust_question(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(S.SafeLoadError, match="x.pt: unreadable checkpoint file") as info:
        S.check_weights_only(path)
    assert not isinstance(info.value, S.UnsafeCheckpointError)


@pytest.mark.parametrize("dtype", [np.uint32, np.int64, np.float32, np.float64, np.bool_, np.uint8])
def test_pack_round_trips_exactly(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 5)) * 1e6).astype(dtype)
    obj = {"a": arr, "t": ("MT19937", arr[0], 3, 0, 0.5), "s": dtype(1), "l": [arr[:, 0]]}
    path = tmp_path / "p.pt"
    torch.save(S.pack(obj), path)
    back = S.load_trusted(path)
    np.testing.assert_array_equal(back["a"], arr)
    assert back["a"].dtype == arr.dtype and back["a"].shape == (3, 5)
    assert isinstance(back["t"], tuple) and back["t"][0] == "MT19937" and back["t"][1].dtype == arr.dtype
    assert isinstance(back["s"], np.generic) and back["s"].dtype == np.dtype(dtype) and back["s"] == dtype(1)
    np.testing.assert_array_equal(back["l"][0], arr[:, 0])


def test_pack_refuses_object_arrays():
    with pytest.raises(TypeError, match="dtype object"):
        S.pack({"x": np.array([{"a": 1}], dtype=object)})
