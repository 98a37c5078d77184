"""Shared numerical checks for kernel tests."""

import pytest
import torch

# The kernels run on CUDA when there is one (the conftest makes it torch's default device), else through the
# Triton interpreter on CPU, which has no bf16.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.bfloat16] if DEVICE == "cuda" else [torch.float32, torch.float16]


def assert_within_2x(name, out, ref, pt, atol):
    """The kernel's error against the float64 reference is at most twice the same-precision PyTorch error + atol.

    out: kernel result; ref: float64 reference on the same inputs; pt: PyTorch at the kernel's precision.
    atol is relative to max(1, max|ref|), so values far above 1 (a KoLeo gradient through a row clamped
    to eps scales by 1/eps) get rounding slack in proportion, values at or below 1 get atol itself.
    """
    assert out.shape == ref.shape == pt.shape, f"{name}: shapes {out.shape}, {ref.shape}, {pt.shape}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values in the kernel's result"
    if not out.numel():
        return
    err = (out.double() - ref).abs().max().item()
    err_pt = (pt.double() - ref).abs().max().item()
    tol = 2 * err_pt + atol * max(1.0, ref.abs().max().item())
    assert err <= tol, f"{name}: kernel error {err:.3e} > 2 x PyTorch error {err_pt:.3e} + {atol:.1e} (scaled)"


def require_triton_path(module, tensor):
    """Skip (with the reason shown by -ra) when the kernel would silently fall back to the reference."""
    if not module._use_triton(tensor):
        pytest.skip("Triton path inactive: run with TRITON_INTERPRET=1 set before `kernels` is imported")
