"""The python, numpy, torch and CUDA random states as one picklable dict (checkpoints; evaluation inside a run).

CUDA: only this process's device (the current one, `cuda:LOCAL_RANK`). Each rank saves its own state; every visible
GPU's would tie a checkpoint to the number of GPUs per node (a resume with fewer could not restore it), and a rank
restoring the other devices' states would only rewrite generators it never uses.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's generator
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, list | tuple):  # a checkpoint holding every visible device's state: take this device's
        index = torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda)
