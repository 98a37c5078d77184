"""Fused kernels, each beside its PyTorch reference.

CUDA tensors run the Triton kernels; CPU tensors run them through the Triton interpreter when
TRITON_INTERPRET=1 was set before this package was imported, and the reference otherwise.
MEXMA_KERNELS=ref sends every call to the reference. Measured results: kernels/BENCHMARKS.md.
"""

from kernels._env import kernels_forced_ref
from kernels.block_diag_attention import block_diag_attention, block_diag_attention_ref
from kernels.koleo import koleo_loss, koleo_loss_ref

__all__ = ["block_diag_attention", "block_diag_attention_ref", "kernels_forced_ref", "koleo_loss", "koleo_loss_ref"]
