"""Block-diagonal attention for stock HF XLM-R modules over a packed (1, T) token stream.

transformers 5 routes XLM-R attention through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` and passes
the model's extra keyword arguments (here `cu_seqlens`, `max_seqlen`) down to that function; for an
implementation name without a registered mask function, `create_bidirectional_mask` returns None, so no
(T, T) mask is ever built. Registering `"mexma_block_diag"` therefore keeps HF modules and weight names as
they are (the original forked 300 lines of RoBERTa for its xformers path).

Backends (`resolve_backend`):
- "kernel": `kernels.block_diag_attention` (Triton on CUDA; on CPU only under TRITON_INTERPRET=1, for tests);
- "sdpa": PyTorch SDPA over the sequences scattered into a padded (n, H, L_max, D) batch with a key padding
  mask. On CPU this beat a per-sequence SDPA loop and a (T, T) block-diagonal boolean mask (see docs/model.md);
- "ref": `kernels.block_diag_attention_ref`, one dense softmax per sequence in fp32.
"auto" picks "kernel" on CUDA and "sdpa" elsewhere; MEXMA_KERNELS=ref forces "ref" everywhere.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

import kernels

ATTN_IMPLEMENTATION = "mexma_block_diag"
BACKENDS = ("auto", "kernel", "sdpa", "ref")


def kernels_forced_ref() -> bool:
    """MEXMA_KERNELS=ref sends every kernel call (attention, KoLeo) to its PyTorch reference."""
    return os.environ.get("MEXMA_KERNELS", "").strip().lower() == "ref"


def resolve_backend(requested: str, device: torch.device) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {requested!r}")
    if kernels_forced_ref() or requested == "ref":
        return "ref"
    if requested == "auto":
        return "kernel" if device.type == "cuda" else "sdpa"
    return requested


def varlen_layout(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Map packed tokens into a padded (n, L_max) grid.

    Returns flat_index (T,) with token t at row seq(t) * L_max + offset(t), key_valid (n, L_max) bool, L_max.
    """
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (n,)
    max_len = int(lens.max())
    seq = torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens)  # (T,)
    offset = torch.arange(len(seq), device=lens.device) - cu_seqlens[:-1].long()[seq]  # (T,)
    key_valid = torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]  # (n, L_max)
    return seq * max_len + offset, key_valid, max_len


class _Scatter(torch.autograd.Function):
    """x (T, ...) -> zeros (n_rows, ...) with row index[t] = x[t]; the backward is a gather.

    index holds distinct rows, so both directions are plain copies; autograd's own backward of index_select
    (index_add over the whole grid) was the slowest op of the CPU step. Same idea as flash-attn's bert_padding.
    """

    @staticmethod
    def forward(ctx, x, index, n_rows):
        ctx.save_for_backward(index)
        return x.new_zeros(n_rows, *x.shape[1:]).index_copy_(0, index, x)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _Gather.apply(grad, index), None, None


class _Gather(torch.autograd.Function):
    """grid (n_rows, ...) -> grid[index] (T, ...); the backward scatters into zeros (index rows distinct)."""

    @staticmethod
    def forward(ctx, grid, index):
        ctx.save_for_backward(index)
        ctx.n_rows = grid.shape[0]
        return grid.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _Scatter.apply(grad, index, ctx.n_rows), None


def padded_sdpa(q, k, v, cu_seqlens, scale, dropout_p=0.0, layout=None):
    """q, k, v: (T, H, D) packed -> (T, H, D) via one SDPA call on a padded (n, H, L_max, D) batch."""
    flat, key_valid, max_len = layout if layout is not None else varlen_layout(cu_seqlens)
    n, (_, heads, dim) = key_valid.shape[0], q.shape

    def to_padded(x):  # (T, H, D) -> (n, H, L_max, D); padding rows are zero
        grid = _Scatter.apply(x, flat, n * max_len)
        return grid.view(n, max_len, heads, dim).transpose(1, 2)

    mask = key_valid[:, None, None, :]  # (n, 1, 1, L_max): True = attend
    out = F.scaled_dot_product_attention(
        to_padded(q), to_padded(k), to_padded(v), attn_mask=mask, dropout_p=dropout_p, scale=scale
    )  # (n, H, L_max, D)
    return _Gather.apply(out.transpose(1, 2).reshape(n * max_len, heads, dim), flat)


def block_diag_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, cu_seqlens=None, max_seqlen=None, **kwargs
):
    """HF attention-interface function. query/key/value: (1, H, T, D) -> ((1, T, H, D), None)."""
    if cu_seqlens is None:
        raise ValueError(
            f"attn_implementation={ATTN_IMPLEMENTATION!r} needs cu_seqlens (a packed (1, T) batch); "
            "call the encoder through MexmaModel, or build it with attn_implementation='sdpa' for padded input"
        )
    if query.shape[0] != 1:
        raise ValueError(f"packed attention expects batch size 1, got query of shape {tuple(query.shape)}")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    backend = resolve_backend(kwargs.get("attention_backend", "auto"), q.device)
    if backend != "sdpa" and dropout > 0.0:
        raise ValueError(f"attention backend {backend!r} has no attention dropout; set attention_dropout=0")
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if backend == "kernel":
        out = kernels.block_diag_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=scaling)
    elif backend == "ref":
        out = kernels.block_diag_attention_ref(q, k, v, cu_seqlens, max_seqlen, softmax_scale=scaling)
    else:
        out = padded_sdpa(q, k, v, cu_seqlens, scaling, dropout, kwargs.get("varlen_layout"))
    return out[None], None


AttentionInterface.register(ATTN_IMPLEMENTATION, block_diag_attention_forward)
