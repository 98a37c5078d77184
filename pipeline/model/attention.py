"""Block-diagonal attention for stock HF XLM-R modules over a packed (1, T) token stream: the dispatch to a backend.

transformers 5 routes XLM-R attention through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` and passes
the model's extra keyword arguments (here `cu_seqlens`, `max_seqlen`, `attention_backend`) down to that function;
for an implementation name without a registered mask function, `create_bidirectional_mask` returns None, so no
(T, T) mask is ever built. Registering `"mexma_block_diag"` therefore keeps HF modules and weight names as
they are (the original forked 300 lines of RoBERTa for its xformers path).

Backends (which one runs where is decided once, in pipeline/model/backends.py; this module only runs the name it
is given):
- "kernel": `kernels.block_diag_attention` (Triton on CUDA; on CPU only under TRITON_INTERPRET=1, for tests);
- "varlen": `torch.nn.attention.varlen.varlen_attn`, FlashAttention's varlen kernel shipped in torch (CUDA,
  fp16/bf16 only; `varlen_attention` adapts our call to its signature);
- "sdpa": PyTorch SDPA over the sequences scattered into a padded (n, H, L_max, D) batch with a key padding
  mask. On CPU this beat a per-sequence SDPA loop and a (T, T) block-diagonal boolean mask (see docs/model.md);
- "ref": `kernels.block_diag_attention_ref`, one dense softmax per sequence in fp32.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

import kernels

try:  # FlashAttention varlen as shipped in torch (2.9+); None where this torch has none
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - depends on the installed torch
    _varlen_attn = None

ATTN_IMPLEMENTATION = "mexma_block_diag"
_HALF = (torch.float16, torch.bfloat16)


def varlen_supported(device: torch.device, dtype: torch.dtype | None, head_dim: int | None = None) -> bool:
    """Whether varlen_attn can run: this torch ships it, CUDA, fp16/bf16, head_dim a multiple of 8 up to 256."""
    dims_ok = head_dim is None or (head_dim % 8 == 0 and head_dim <= 256)
    return _varlen_attn is not None and torch.device(device).type == "cuda" and dtype in _HALF and dims_ok


@functools.lru_cache(maxsize=4)
def _takes_scale(fn) -> bool:
    return "scale" in inspect.signature(fn).parameters


def varlen_attention(q, k, v, cu_seqlens, max_seqlen: int, scale: float | None = None, cu_seqlens_k=None,
                     max_seqlen_k: int | None = None):  # fmt: skip
    """q, k, v: (T, H, D) fp16/bf16 CUDA, cu_seqlens int32 (n + 1,) -> (T, H, D) through varlen_attn.

    Self-attention: the same cu_seqlens / max_seqlen for queries and keys. With cu_seqlens_k / max_seqlen_k
    (a query subset, `packed_attention`): q (T_q, H, D) is split by cu_seqlens, k and v (T_k, H, D) by
    cu_seqlens_k; max_seqlen / max_seqlen_k are upper bounds of the per-sequence query / key counts.
    torch 2.13's signature is varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None,
    ...); a version without `scale` gets q pre-scaled by scale * sqrt(D) (its default scale is 1 / sqrt(D)).
    """
    if _varlen_attn is None:
        raise RuntimeError(
            f"attention backend 'varlen' needs torch.nn.attention.varlen.varlen_attn, which torch "
            f"{torch.__version__} lacks: use attention=kernel or sdpa"
        )
    if q.dtype not in _HALF:
        raise ValueError(f"attention backend 'varlen' (FlashAttention) takes fp16/bf16, got {q.dtype}: use sdpa")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = (t.contiguous() for t in (q, k, v))  # no-op for HF's (T, H, D) views
    if cu_seqlens_k is None:
        cu_seqlens_k, max_seqlen_k = cu_seqlens, max_seqlen
    args = (k, v, cu_seqlens, cu_seqlens_k, max_seqlen, max_seqlen_k)
    if _takes_scale(_varlen_attn):
        return _varlen_attn(q, *args, scale=scale)
    return _varlen_attn(q * (scale * math.sqrt(q.shape[-1])), *args)


def varlen_layout(cu_seqlens: torch.Tensor, max_len: int | None = None, n_tokens: int | None = None):
    """Map packed tokens into a padded (n, L_max) grid.

    Returns flat_index (T,) with token t at row seq(t) * L_max + offset(t), key_valid (n, L_max) bool, L_max.
    With max_len and n_tokens given (python ints from the collator) nothing is read back from the device.
    """
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (n,)
    max_len = int(lens.max()) if max_len is None else int(max_len)
    seq = torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens, output_size=n_tokens)  # (T,)
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


def padded_sdpa(q, k, v, cu_seqlens, scale, dropout_p=0.0, layout=None, kv_layout=None):
    """q, k, v: (T, H, D) packed -> (T, H, D) via one SDPA call on a padded (n, H, L_max, D) batch.

    With kv_layout (a query subset, `packed_attention`): `layout` / cu_seqlens place the (T_q, H, D) queries on
    their own (n, L_q) grid, kv_layout the (T_k, H, D) keys and values on an (n, L_k) grid with its key mask.
    """
    flat, key_valid, max_len = layout if layout is not None else varlen_layout(cu_seqlens)
    kv_flat, key_valid, kv_len = kv_layout if kv_layout is not None else (flat, key_valid, max_len)
    n, (_, heads, dim) = key_valid.shape[0], q.shape

    def to_padded(x, index, length):  # (T, H, D) -> (n, H, length, D); padding rows are zero
        grid = _Scatter.apply(x, index, n * length)
        return grid.view(n, length, heads, dim).transpose(1, 2)

    mask = key_valid[:, None, None, :]  # (n, 1, 1, L_k): True = attend
    out = F.scaled_dot_product_attention(
        to_padded(q, flat, max_len),
        to_padded(k, kv_flat, kv_len),
        to_padded(v, kv_flat, kv_len),
        attn_mask=mask,
        dropout_p=dropout_p,
        scale=scale,
    )  # (n, H, L_q, D)
    return _Gather.apply(out.transpose(1, 2).reshape(n * max_len, heads, dim), flat)


def subset_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, scale=None):
    """Reference of a query-subset call: one dense fp32 softmax per sequence (reads the bounds back, as
    `block_diag_attention_ref` does). q: (T_q, H, D) split by cu_seqlens_q, k, v: (T_k, H, D) by cu_seqlens_k."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    dtype = torch.promote_types(q.dtype, torch.float32)
    out = []
    for qa, qb, ka, kb in zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist(), cu_seqlens_k[:-1].tolist(),
                              cu_seqlens_k[1:].tolist()):  # fmt: skip
        qs = q[qa:qb].transpose(0, 1).to(dtype)  # (H, L_q, D)
        ks, vs = (t[ka:kb].transpose(0, 1).to(dtype) for t in (k, v))  # (H, L_k, D)
        probs = torch.softmax(torch.matmul(qs, ks.transpose(-1, -2)) * scale, dim=-1)
        out.append(torch.matmul(probs, vs).transpose(0, 1).to(q.dtype))  # (L_q, H, D)
    return torch.cat(out, dim=0) if out else q.new_empty(q.shape)


def packed_attention(q, k, v, cu_seqlens, max_seqlen, scale, backend, dropout=0.0, layout=None, cu_seqlens_k=None,
                     max_seqlen_k=None, kv_layout=None):  # fmt: skip
    """Block-diagonal attention on packed (T, H, D) q, k, v through one resolved backend -> (T_q, H, D).

    Self-attention when cu_seqlens_k is None: q, k, v share cu_seqlens. Query subset otherwise (the models' last
    layers, which need outputs at a few rows only): sequence i's queries are q[cu_seqlens[i]:cu_seqlens[i+1]]
    and its keys / values k, v[cu_seqlens_k[i]:cu_seqlens_k[i+1]]; max_seqlen / max_seqlen_k bound the counts
    (python ints). The Triton kernel is self-attention only: a query-subset call takes the backend that
    `Backends.subset` gives ("varlen", "sdpa" or "ref"). layout / kv_layout: `varlen_layout`s of the query and key
    grids for "sdpa" (built here when None).
    """
    if backend != "sdpa" and dropout > 0.0:
        raise ValueError(f"attention backend {backend!r} has no attention dropout; set attention_dropout=0")
    if cu_seqlens_k is None:
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        if backend == "kernel":
            return kernels.block_diag_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=scale)
        if backend == "varlen":
            return varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale)
        if backend == "ref":
            return kernels.block_diag_attention_ref(q, k, v, cu_seqlens, max_seqlen, softmax_scale=scale)
        return padded_sdpa(q, k, v, cu_seqlens, scale, dropout, layout)
    if max_seqlen is None or max_seqlen_k is None:
        raise ValueError("a query-subset attention call needs max_seqlen and max_seqlen_k (python ints)")
    if backend == "varlen":
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale, cu_seqlens_k, max_seqlen_k)
    if backend == "ref":
        return subset_attention_ref(q, k, v, cu_seqlens, cu_seqlens_k, scale)
    if backend != "sdpa":
        raise ValueError(f"a query-subset attention call runs varlen, sdpa or ref, not {backend!r} (Backends.subset)")
    layout = layout if layout is not None else varlen_layout(cu_seqlens, max_seqlen, q.shape[0])
    kv_layout = kv_layout if kv_layout is not None else varlen_layout(cu_seqlens_k, max_seqlen_k, k.shape[0])
    return padded_sdpa(q, k, v, cu_seqlens, scale, dropout, layout, kv_layout)


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
    backend = kwargs.get("attention_backend")
    if backend is None:
        raise ValueError("packed attention needs attention_backend, a resolved name (pipeline/model/backends.py)")
    out = packed_attention(q, k, v, cu_seqlens, max_seqlen, scaling, backend, dropout, kwargs.get("varlen_layout"))
    return out[None], None


AttentionInterface.register(ATTN_IMPLEMENTATION, block_diag_attention_forward)
