"""This process's device and the host <-> device copies of a batch.

One process per accelerator: LOCAL_RANK names the device, made current before the process group exists
(runtime/collectives.py). The group's backend pairs gloo for host tensors with the accelerator's own backend.
"""

from __future__ import annotations

import os

import torch

ACCELERATOR_BACKENDS = {"cuda": "nccl", "xpu": "xccl", "hpu": "hccl", "npu": "hccl"}


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def backend_for(device_type: str, accelerator_backend: str | None = None) -> str:
    """`gloo` on CPU; `cpu:gloo,<device>:<backend>` on an accelerator, so host and device tensors both reduce."""
    if device_type == "cpu":
        return "gloo"
    backend = accelerator_backend or ACCELERATOR_BACKENDS.get(device_type)
    if backend is None or backend == "gloo":
        return "gloo"
    return f"cpu:gloo,{device_type}:{backend}"


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def select_device(device_type: str) -> torch.device:
    """This process's device: `<type>:LOCAL_RANK`, made current (must precede the process group and any collective)."""
    if device_type == "cpu":
        return torch.device("cpu")
    device = torch.device(device_type, local_rank())
    torch.get_device_module(device_type).set_device(device)
    return device


def device_for(choice: str) -> torch.device:
    """`auto`: this rank's GPU (LOCAL_RANK) when there is one, else the CPU; `cuda` refuses when none is visible."""
    if choice == "auto":
        choice = default_device_type()
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible")
        return torch.device("cuda", local_rank())
    return torch.device(choice)


# -- host <-> device ----------------------------------------------------------------------------------------------
def pin(batch: dict) -> dict:
    """Page-locked copies of a batch's tensors (so the H2D copy can be asynchronous); other values unchanged."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to `device` without blocking the host (asynchronous from pinned memory on CUDA; no-op on CPU)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
