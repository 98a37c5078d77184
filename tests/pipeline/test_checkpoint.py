"""Checkpoint commit protocol and fault cases, on a stand-in engine that writes DeepSpeed's file layout.

The real DeepSpeed engine goes through the same manager in test_resume.py; here each fault is injected exactly:
a disk that fills mid-save (patched writer), a save killed before its completion record, truncated and
bit-flipped files, pruning.
"""

from __future__ import annotations

import errno
import json
import logging
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from pipeline.training import checkpoint as C


class FakeEngine:
    """Writes/reads the files DeepSpeed's ZeRO-2 writes for one rank (model states + optimizer partition)."""

    def __init__(self, value: float = 0.0):
        self.weights = torch.full((64,), value)

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert save_latest is False  # the manager owns `latest`
        ckpt = Path(save_dir) / tag
        ckpt.mkdir(parents=True, exist_ok=True)
        torch.save({"module": self.weights, **client_state}, ckpt / "mp_rank_00_model_states.pt")
        torch.save({"optimizer": self.weights * 2}, ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt")

    def load_universal_checkpoint(self):  # DeepSpeedEngine's: False = the checkpoint's own world size
        return False

    def load_checkpoint(self, load_dir, tag, **_):
        self.weights = torch.load(Path(load_dir) / tag / "mp_rank_00_model_states.pt")["module"]
        return str(Path(load_dir) / tag), {}


def _save(mgr, step, value=None):
    return mgr.save(FakeEngine(step if value is None else value), step, {"step": step, "sampler": {"index": step}})


def test_save_commits_complete_record_then_latest(tmp_path):
    mgr = C.CheckpointManager(tmp_path, keep=3)
    tag = _save(mgr, 10)
    assert tag == "step_00000010" and mgr.latest_marked() == tag
    record = json.loads((mgr.root / tag / C.COMPLETE).read_text())
    assert set(record["files"]) == {
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "client_rank00000.pt",
    }
    assert mgr.verify(tag) is None
    engine = FakeEngine()
    assert mgr.load(engine, mgr.find_resume())["sampler"] == {"index": 10}
    assert float(engine.weights[0]) == 10.0
    assert not list(mgr.root.glob(".*tmp*"))  # no temp files left behind


def test_keep_last_k(tmp_path):
    mgr = C.CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3, 4, 5):
        _save(mgr, step)
    assert mgr.tags() == ["step_00000005", "step_00000004"]


def test_disk_full_mid_save_keeps_previous(tmp_path, monkeypatch):
    """torch.save of the optimizer file hits ENOSPC: clear error, partial files gone, `latest` unchanged."""
    mgr = C.CheckpointManager(tmp_path, keep=3)
    _save(mgr, 1)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if "optim_states" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(C.CheckpointError, match=r"no space left on the device.*step_00000001 is intact"):
        _save(mgr, 2)
    assert mgr.latest_marked() == "step_00000001" and mgr.verify("step_00000001") is None
    assert not (mgr.root / "step_00000002").exists()


def test_disk_full_writing_client_state(tmp_path, monkeypatch):
    mgr = C.CheckpointManager(tmp_path, keep=3)
    _save(mgr, 1)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "write_atomic", full)
    with pytest.raises(C.CheckpointError, match="no space left"):
        _save(mgr, 2)
    assert mgr.latest_marked() == "step_00000001"


def test_refuses_to_start_a_save_that_cannot_fit(tmp_path, monkeypatch):
    mgr = C.CheckpointManager(tmp_path, keep=3)
    _save(mgr, 1)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(C.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(C.CheckpointError, match=r"no space left for a checkpoint.*step_00000001.*is intact"):
        _save(mgr, 2)
    assert mgr.latest_marked() == "step_00000001" and not (mgr.root / "step_00000002").exists()


def test_killed_save_is_never_marked_and_is_redone(tmp_path, caplog):
    """A kill after DeepSpeed's files but before COMPLETE.json: resume ignores it; saving that step again works."""
    mgr = C.CheckpointManager(tmp_path, keep=3)
    _save(mgr, 1)
    FakeEngine(2.0).save_checkpoint(str(mgr.root), "step_00000002", {}, save_latest=False)  # the killed save
    with caplog.at_level(logging.WARNING):
        assert mgr.find_resume() == "step_00000001"
    assert "step_00000002 is not usable" in caplog.text and "never finished" in caplog.text
    _save(mgr, 2)
    assert mgr.find_resume() == "step_00000002"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "record"])
def test_damaged_latest_falls_back_with_warning(tmp_path, caplog, damage):
    mgr = C.CheckpointManager(tmp_path, keep=3)
    _save(mgr, 1)
    _save(mgr, 2)
    path = mgr.root / "step_00000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # same size: only sha256 sees it
    elif damage == "delete":
        path.unlink()
    else:
        (mgr.root / "step_00000002" / C.COMPLETE).write_text("{")
    with caplog.at_level(logging.WARNING):
        assert mgr.find_resume() == "step_00000001"
    assert "step_00000002 is not usable" in caplog.text
    engine = FakeEngine()
    mgr.load(engine, "step_00000001")
    assert float(engine.weights[0]) == 1.0


def test_no_checkpoint_means_fresh_start(tmp_path):
    assert C.CheckpointManager(tmp_path).find_resume() is None


def test_load_with_more_ranks_than_saved_is_explained(tmp_path):
    mgr = C.CheckpointManager(tmp_path)
    _save(mgr, 1)
    other = C.CheckpointManager(tmp_path, rank=1)
    with pytest.raises(C.CheckpointError, match="client_rank00001.pt missing.*same number of processes"):
        other.load(FakeEngine(), "step_00000001")


def test_write_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "latest"
    C.write_atomic(target, b"step_00000001")
    C.write_atomic(target, b"step_00000002")
    assert target.read_text() == "step_00000002" and [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_each_file_is_hashed_by_the_rank_that_wrote_it():
    assert C._writer_rank("mp_rank_00_model_states.pt") == 0
    assert C._writer_rank("zero_pp_rank_3_mp_rank_00_optim_states.pt") == 3
    assert C._writer_rank("bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt") == 12
    assert C._writer_rank("client_rank00007.pt") == 7
