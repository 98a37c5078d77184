"""Fused kernels, each beside its PyTorch reference. MEXMA_KERNELS=ref sends every call to the reference."""

from kernels.block_diag_attention import block_diag_attention, block_diag_attention_ref
from kernels.koleo import koleo_loss, koleo_loss_ref

__all__ = ["block_diag_attention", "block_diag_attention_ref", "koleo_loss", "koleo_loss_ref"]
