"""Kernel tests run the Triton kernels on CPU through the interpreter (`make test` sets TRITON_INTERPRET=1)."""

import pytest


@pytest.fixture(autouse=True)
def _no_kernel_override(monkeypatch):
    # A user's MEXMA_KERNELS=ref would turn every kernel test into a reference-vs-reference test.
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)
