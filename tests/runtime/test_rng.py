"""RNG state of a checkpoint: the local CUDA device's generator only (stand-in CUDA functions on a CPU machine), so a
resume with another number of GPUs per node restores it; checkpoints holding every device's state still load."""

import random

import numpy as np
import pytest
import torch

from runtime import rng


@pytest.fixture
def fake_cuda(monkeypatch):
    calls = []

    def forbidden(*args, **kwargs):
        raise AssertionError("every device's RNG state touched")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7, 1], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(state.tolist()))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", forbidden)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", forbidden)
    return calls


def test_only_the_local_device_is_saved_and_restored(fake_cuda):
    state = rng.rng_state()
    assert state["cuda"].tolist() == [7, 1]
    random.random(), np.random.rand(), torch.rand(1)
    rng.set_rng_state(state)
    assert fake_cuda == [[7, 1]]
    assert random.getstate() == state["python"] and torch.equal(torch.get_rng_state(), state["torch"])


def test_a_checkpoint_with_every_device_restores_this_one(fake_cuda):
    state = rng.rng_state()
    state["cuda"] = [torch.tensor([0]), torch.tensor([5]), torch.tensor([9])]  # 3 GPUs saved; this is cuda:1
    rng.set_rng_state(state)
    state["cuda"] = [torch.tensor([0])]  # saved on a node with 1 GPU: no state for cuda:1, nothing to restore
    rng.set_rng_state(state)
    assert fake_cuda == [[5]]
