"""Kernel tests run on CUDA when present (fp16, bf16), else on CPU through the Triton interpreter (`make test` sets
TRITON_INTERPRET=1; fp32, fp16). The device is torch's default device for each test, so tests build tensors plainly."""

import pytest
import torch

from tests.kernels.numerics import DEVICE


@pytest.fixture(autouse=True)
def _no_kernel_override(monkeypatch):
    # A user's MEXMA_KERNELS=ref would turn every kernel test into a reference-vs-reference test.
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)


@pytest.fixture(autouse=True)
def _kernel_device():
    """Every tensor a kernel test creates lands on DEVICE (CUDA when present). Afterwards the default device is
    unset (None), not set back to "cpu": a set default device stays a torch-function mode that every later test in
    the process would run under (it made a patched Tensor.tolist count each call twice in tests/pipeline)."""
    torch.set_default_device(DEVICE)
    yield
    torch.set_default_device(None)
