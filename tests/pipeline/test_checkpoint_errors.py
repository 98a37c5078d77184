"""Checkpoint save errors as the user reads them and loads that run no code.

torch.save's C++ writer reports a full disk as "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs
598" (no errno): the first save of a run (no earlier checkpoint, so no up-front space check) must still say "no space
left on the device". Loading refuses files that need more than the weights-only unpickler, before DeepSpeed (which
unpickles with weights_only=False) sees them.
"""

from __future__ import annotations

import os
import subprocess
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.training import checkpoint as C

ENFORCE_FAIL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"  # torch 2.13, full tmpfs
usage = namedtuple("usage", "total used free")


class Engine:
    """Writes DeepSpeed's ZeRO-2 file names for one rank; loads like DeepSpeed (weights_only=False)."""

    def __init__(self, n: int = 64, extra=None):
        self.weights, self.extra, self.loaded = torch.ones(n), extra, False

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        ckpt = Path(save_dir) / tag
        ckpt.mkdir(parents=True, exist_ok=True)
        torch.save({"module": self.weights, "extra": self.extra, **client_state}, ckpt / "mp_rank_00_model_states.pt")
        torch.save({"optimizer": self.weights * 2}, ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt")

    def load_universal_checkpoint(self):
        return False

    def load_checkpoint(self, load_dir, tag, **_):
        torch.load(Path(load_dir) / tag / "mp_rank_00_model_states.pt", weights_only=False)
        self.loaded = True
        return str(Path(load_dir) / tag), {}


def _fail_writes(monkeypatch, error: BaseException):
    def save(obj, f, *a, **k):
        raise error

    monkeypatch.setattr(torch, "save", save)


def test_first_save_on_a_full_disk_says_so(tmp_path, monkeypatch):
    mgr = C.CheckpointManager(tmp_path)
    _fail_writes(monkeypatch, RuntimeError(ENFORCE_FAIL))
    monkeypatch.setattr(C.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(C.CheckpointError, match=r"no space left on the device.*no earlier checkpoint exists"):
        mgr.save(Engine(), 1, {"step": 1})
    assert not (mgr.root / "step_00000001").exists() and mgr.latest_marked() is None


def test_write_failure_with_free_space_is_not_called_a_full_disk(tmp_path, monkeypatch):
    mgr = C.CheckpointManager(tmp_path)
    _fail_writes(monkeypatch, RuntimeError(ENFORCE_FAIL))
    monkeypatch.setattr(C.shutil, "disk_usage", lambda p: usage(10**12, 0, 10**12))
    with pytest.raises(C.CheckpointError, match=r"write failed \(\[enforce fail.*quota, or an I/O error") as info:
        mgr.save(Engine(), 1, {"step": 1})
    assert "no space left" not in str(info.value)


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)  # lazy: a failed writer may still hold a file


def test_first_save_on_a_real_full_tmpfs(full_tmpfs):
    mgr = C.CheckpointManager(full_tmpfs)
    with pytest.raises(C.CheckpointError, match=r"no space left on the device.*no earlier checkpoint exists"):
        mgr.save(Engine(n=10**6), 1, {"step": 1})  # 4 MB of weights into 256 KiB
    assert not (mgr.root / "step_00000001").exists()


class RunsCode:
    """A pickle that creates a directory when unpickled by the full unpickler (what a malicious file could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def test_load_refuses_deepspeed_files_that_would_run_code(tmp_path):
    mgr = C.CheckpointManager(tmp_path / "run")
    marker = tmp_path / "code_ran"
    tag = mgr.save(Engine(extra=RunsCode(marker)), 1, {"step": 1})
    assert not marker.exists()
    engine = Engine()
    with pytest.raises(C.NoUsableCheckpointError, match=r"mp_rank_00_model_states.pt: needs os.makedirs.*--trust"):
        mgr.load(engine, tag)
    assert not marker.exists() and not engine.loaded  # refused before DeepSpeed unpickled anything
    engine_state = mgr.load(engine, tag, trust=True)
    assert marker.exists() and engine.loaded and engine_state["step"] == 1  # --trust-checkpoint: DeepSpeed unpickles it


def test_client_state_round_trips_weights_only(tmp_path):
    """numpy's RNG state needs numpy globals under pickle: it is stored as lists and comes back exactly."""
    mgr = C.CheckpointManager(tmp_path)
    np.random.seed(3)
    state = {"step": 1, "rng": {"numpy": np.random.get_state(), "scalar": np.float32(0.1)}}
    tag = mgr.save(Engine(), 1, state)
    loaded = mgr.load(Engine(), tag)
    np.random.set_state(loaded["rng"]["numpy"])
    again = np.random.rand(4)
    np.random.set_state(state["rng"]["numpy"])
    np.testing.assert_array_equal(again, np.random.rand(4))
    assert loaded["rng"]["scalar"] == np.float32(0.1) and loaded["rng"]["scalar"].dtype == np.float32


def test_old_client_state_with_numpy_pickles_needs_trust(tmp_path):
    mgr = C.CheckpointManager(tmp_path)
    tag = mgr.save(Engine(), 1, {"step": 1})
    client = mgr.root / tag / "client_rank00000.pt"
    torch.save({"step": 1, "rng": np.arange(3)}, client)  # the format before weights-only loading
    with pytest.raises(C.NoUsableCheckpointError, match=r"client_rank00000.pt: needs numpy.*--trust-checkpoint"):
        mgr.load(Engine(), tag)
    assert list(mgr.load(Engine(), tag, trust=True)["rng"]) == [0, 1, 2]
