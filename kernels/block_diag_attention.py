"""Block-diagonal (varlen) flash attention over a packed token stream, forward and backward.

Token i attends to token j only when both lie in the same sequence of `cu_seqlens` (FlashAttention's
varlen convention: q, k, v, o are (total_tokens, n_heads, head_dim), `cu_seqlens` int32 (n_seqs + 1,)
from 0 to total_tokens). Non-causal, no dropout, no bias.

Fused: QK^T, the online softmax (fp32, base 2) and PV in one pass per query block (FlashAttention-2,
Dao 2023, Algorithm 1); the log-sum-exp is saved and the backward recomputes P tile by tile, so no
T x T or n_seqs x L x L tensor exists anywhere. Work is laid out per (sequence block, head): a block
table maps each program to one BLOCK-row tile of one sequence, so no tile mixes two sequences and a
stream of many short sequences launches no empty per-sequence programs up to max_seqlen.
Backward without atomics: one program per (key block, head) accumulates dk, dv over its sequence's
query blocks; a second kernel, one program per (query block, head), accumulates dq.

Tested: CPU under TRITON_INTERPRET=1 in fp32 and fp16, head dims 16-64 and odd ones (tests/kernels).
Written for CUDA fp16/bf16/fp32 (fp32 dots in IEEE precision unless torch allows TF32).

Caution:
- head_dim <= 256; head dims that are not a power of two are padded to one inside the tile (masked).
- cu_seqlens values are checked only when they live on the CPU (a check on CUDA would sync the host);
  tokens outside [cu_seqlens[0], cu_seqlens[-1]) get zero output and zero gradient.
- Block sizes come from a heuristic on the mean sequence length, not from autotuning; see BENCHMARKS.md.
  MEXMA_ATTN_TILES=BLOCK_MxBLOCK_NxWARPS (e.g. 64x32x4) overrides it, for tuning on a GPU.
- CPU tensors run the Triton kernel only when TRITON_INTERPRET=1 was set before `kernels` was imported
  (Triton decides interpreter mode when a kernel is decorated); otherwise they run the reference.
- MEXMA_KERNELS=ref sends every call to `block_diag_attention_ref`.
"""

import os
import weakref

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels._env import kernels_forced_ref

_INTERPRET = bool(triton.knobs.runtime.interpret)  # fixed when the @triton.jit kernels below are decorated
_MAX_HEAD_DIM = 256


def block_diag_attention_ref(q, k, v, cu_seqlens, max_seqlen=None, softmax_scale=None, upcast=True):
    """Plain PyTorch reference: one dense softmax attention per sequence.

    q, k, v: (T, H, D); cu_seqlens: int32 (n_seqs + 1,). Returns o: (T, H, D) in q's dtype.
    upcast=True computes in at least fp32 (float64 stays float64); upcast=False computes in q's dtype,
    the same-precision PyTorch path the tests measure the kernel's error against.
    """
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    dtype = torch.promote_types(q.dtype, torch.float32) if upcast else q.dtype
    bounds = cu_seqlens.tolist()
    out = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1).to(dtype) for t in (q, k, v))  # (H, L, D)
        scores = torch.matmul(qs, ks.transpose(-1, -2)) * scale  # (H, L, L)
        probs = torch.softmax(scores, dim=-1)
        out.append(torch.matmul(probs, vs).transpose(0, 1).to(q.dtype))  # (L, H, D)
    return torch.cat(out, dim=0) if out else q.new_empty(q.shape)


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out, LSE, CU_SEQLENS, BLOCK_SEQ, BLOCK_START,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lh,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    tl.static_assert(BLOCK_D <= 256)
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1).to(tl.int64)
    start_m = tl.load(BLOCK_START + pid_b)
    if start_m < 0:  # the grid is an upper bound on the number of query blocks
        return
    seq = tl.load(BLOCK_SEQ + pid_b)
    seq_start = tl.load(CU_SEQLENS + seq).to(tl.int64)
    seq_len = tl.load(CU_SEQLENS + seq + 1) - tl.load(CU_SEQLENS + seq)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq_len
    mask_d = offs_d < HEAD_DIM
    q_ptrs = Q + (seq_start + offs_m)[:, None] * stride_qt + pid_h * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max of the scores, base-2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < seq_len
        kt_ptrs = K + (seq_start + cols)[None, :] * stride_kt + pid_h * stride_kh + offs_d[:, None]
        kt = tl.load(kt_ptrs, mask=mask_n[None, :] & mask_d[:, None], other=0.0)  # (BLOCK_D, BLOCK_N)
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))  # finite: key 0 of the sequence lies in the first tile
        p = tl.math.exp2(qk - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = V + (seq_start + cols)[:, None] * stride_vt + pid_h * stride_vh + offs_d[None, :]
        v = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_ij
    acc = acc / l_i[:, None]
    o_ptrs = Out + (seq_start + offs_m)[:, None] * stride_ot + pid_h * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + pid_h * stride_lh + seq_start + offs_m, m_i + tl.math.log2(l_i), mask=mask_m)


@triton.jit
def _attn_bwd_delta_kernel(
    Out, DO, DELTA, n_tokens,
    stride_ot, stride_oh, stride_dot, stride_doh, stride_lh,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij (FlashAttention-2, Algorithm 2, line 4)
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < n_tokens)[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows = offs_m.to(tl.int64)[:, None]
    o = tl.load(Out + rows * stride_ot + pid_h * stride_oh + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + rows * stride_dot + pid_h * stride_doh + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_h * stride_lh + offs_m, delta, mask=offs_m < n_tokens)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_SEQLENS, BLOCK_SEQ, BLOCK_START,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, stride_lh,
    stride_gt, stride_gh, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # One program owns one key block: dV = P^T dO, dK = scale * dS^T Q with dS = P * (dP - delta).
    # DK, DV: (T, H, D) with strides (stride_gt, stride_gh, 1).
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1).to(tl.int64)
    start_n = tl.load(BLOCK_START + pid_b)
    if start_n < 0:
        return
    seq = tl.load(BLOCK_SEQ + pid_b)
    seq_start = tl.load(CU_SEQLENS + seq).to(tl.int64)
    seq_len = tl.load(CU_SEQLENS + seq + 1) - tl.load(CU_SEQLENS + seq)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < seq_len
    mask_d = offs_d < HEAD_DIM
    mask_nd = mask_n[:, None] & mask_d[None, :]
    rows_n = (seq_start + offs_n)[:, None]
    k = tl.load(K + rows_n * stride_kt + pid_h * stride_kh + offs_d[None, :], mask=mask_nd, other=0.0)
    v = tl.load(V + rows_n * stride_vt + pid_h * stride_vh + offs_d[None, :], mask=mask_nd, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, seq_len, BLOCK_M):
        rows = start_m + offs_m
        mask_m = rows < seq_len
        rows_t = (seq_start + rows)[:, None]
        mask_md = mask_m[:, None] & mask_d[None, :]
        q = tl.load(Q + rows_t * stride_qt + pid_h * stride_qh + offs_d[None, :], mask=mask_md, other=0.0)
        do = tl.load(DO + rows_t * stride_dot + pid_h * stride_doh + offs_d[None, :], mask=mask_md, other=0.0)
        lse = tl.load(LSE + pid_h * stride_lh + seq_start + rows, mask=mask_m, other=0.0)  # (BLOCK_M,)
        delta = tl.load(DELTA + pid_h * stride_lh + seq_start + rows, mask=mask_m, other=0.0)
        qkt = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        pt = tl.math.exp2(qkt - lse[None, :])
        pt = tl.where(mask_n[:, None] & mask_m[None, :], pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PRECISION)
    out_offs = rows_n * stride_gt + pid_h * stride_gh + offs_d[None, :]
    tl.store(DK + out_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=mask_nd)
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=mask_nd)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_SEQLENS, BLOCK_SEQ, BLOCK_START,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, stride_lh,
    stride_gt, stride_gh, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # One program owns one query block: dQ = scale * dS K. DQ: (T, H, D) with strides (stride_gt, stride_gh, 1).
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1).to(tl.int64)
    start_m = tl.load(BLOCK_START + pid_b)
    if start_m < 0:
        return
    seq = tl.load(BLOCK_SEQ + pid_b)
    seq_start = tl.load(CU_SEQLENS + seq).to(tl.int64)
    seq_len = tl.load(CU_SEQLENS + seq + 1) - tl.load(CU_SEQLENS + seq)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq_len
    mask_d = offs_d < HEAD_DIM
    mask_md = mask_m[:, None] & mask_d[None, :]
    rows_m = (seq_start + offs_m)[:, None]
    q = tl.load(Q + rows_m * stride_qt + pid_h * stride_qh + offs_d[None, :], mask=mask_md, other=0.0)
    do = tl.load(DO + rows_m * stride_dot + pid_h * stride_doh + offs_d[None, :], mask=mask_md, other=0.0)
    lse = tl.load(LSE + pid_h * stride_lh + seq_start + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + pid_h * stride_lh + seq_start + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < seq_len
        rows_n = (seq_start + cols)[:, None]
        mask_nd = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + rows_n * stride_kt + pid_h * stride_kh + offs_d[None, :], mask=mask_nd, other=0.0)
        v = tl.load(V + rows_n * stride_vt + pid_h * stride_vh + offs_d[None, :], mask=mask_nd, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(qk - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    out_offs = rows_m * stride_gt + pid_h * stride_gh + offs_d[None, :]
    tl.store(DQ + out_offs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask_md)


# The last cu_seqlens seen -> its tables. A model calls the kernel once per layer and direction with one
# cu_seqlens tensor per step; reusing its tables saves ~8 small launches per call. The entry holds a weak
# reference (identity, not value) and the tensor's version counter, so a new tensor or an in-place edit misses.
_LAST_TABLES = {"ref": None, "version": None, "tables": {}}


def _cached_block_table(cu_seqlens, n_tokens, block):
    if cu_seqlens.is_inference():  # inference tensors keep no version counter: no safe cache key
        return _block_table(cu_seqlens, n_tokens, block)
    entry = _LAST_TABLES
    if entry["ref"] is None or entry["ref"]() is not cu_seqlens or entry["version"] != cu_seqlens._version:
        entry.update(ref=weakref.ref(cu_seqlens), version=cu_seqlens._version, tables={})
    if (n_tokens, block) not in entry["tables"]:
        entry["tables"][n_tokens, block] = _block_table(cu_seqlens, n_tokens, block)
    return entry["tables"][n_tokens, block]


def _block_table(cu_seqlens, n_tokens, block):
    """Map program p to (sequence, first row of its tile) without a host sync.

    Sequence s has ceil(L_s / block) tiles; sum_s ceil(L_s / block) <= n_tokens // block + n_seqs, so that
    many programs always suffice. Spare programs get start -1 and return at once.
    Returns (seq int32 (P,), start int32 (P,), P).
    """
    n_seqs = cu_seqlens.numel() - 1
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (S,)
    n_blocks = (lens + block - 1) // block  # (S,)
    ends = torch.cumsum(n_blocks, 0)  # (S,) inclusive running count of tiles
    n_prog = n_tokens // block + n_seqs
    prog = torch.arange(n_prog, device=cu_seqlens.device)  # (P,)
    seq = torch.searchsorted(ends, prog, right=True)  # first s with ends[s] > p
    valid = seq < n_seqs
    seq = seq.clamp(max=n_seqs - 1)
    start = (prog - (ends[seq] - n_blocks[seq])) * block
    start = torch.where(valid, start, torch.full_like(start, -1))
    return seq.to(torch.int32), start.to(torch.int32), n_prog


def _dot_precision(dtype):
    """fp32 dots follow torch's matmul setting, like the reference's torch.matmul; halves ignore it."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _launch_config(n_tokens, n_seqs, head_dim, dtype, block_m=None, block_n=None):
    """Tile sizes: 32-row tiles when sequences are short (mean <= 48 tokens waste less on the last tile),
    64 otherwise; head dims padded to a power of two >= 16 (tl.dot's minimum). fp32 at D = 128 keeps 32-row
    tiles and 2 stages: a 64 x 128 fp32 tile is 32 KiB, and K, V x 3 stages + Q would fill the 228 KiB of an
    H100 SM's shared memory. Untuned: see BENCHMARKS.md. Returns block_m, block_n, block_d, launch options."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    wide_fp32 = dtype == torch.float32 and block_d >= 128
    default = 32 if n_tokens / max(n_seqs, 1) <= 48 or wide_fp32 else 64
    options = dict(num_warps=8 if block_d >= 128 else 4, num_stages=2 if dtype == torch.float32 else 3)
    tiles = _tiles_override()
    if tiles is not None and block_m is None and block_n is None:
        block_m, block_n, options["num_warps"] = tiles
    return block_m or default, block_n or default, block_d, options


def _tiles_override():
    """MEXMA_ATTN_TILES=BLOCK_MxBLOCK_NxWARPS (e.g. 64x32x4) replaces the heuristic: a tuning knob for GPUs."""
    text = os.environ.get("MEXMA_ATTN_TILES", "").strip()
    if not text:
        return None
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"MEXMA_ATTN_TILES={text!r}: expected BLOCK_MxBLOCK_NxWARPS such as 64x32x4")
    block_m, block_n, warps = (int(p) for p in parts)
    if any(b < 16 or b & (b - 1) for b in (block_m, block_n)) or warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"MEXMA_ATTN_TILES={text!r}: blocks must be powers of two >= 16, warps in 1-16 (power of 2)")
    return block_m, block_n, warps


def _attn_forward(q, k, v, cu_seqlens, sm_scale, block_m=None, block_n=None):
    """Launch the forward kernel. q, k, v: (T, H, D), last dim contiguous. Returns o (T, H, D), lse (H, T) fp32."""
    n_tokens, n_heads, head_dim = q.shape
    n_seqs = cu_seqlens.numel() - 1
    block_m, block_n, block_d, options = _launch_config(n_tokens, n_seqs, head_dim, q.dtype, block_m, block_n)
    o = torch.zeros_like(q, memory_format=torch.contiguous_format)
    lse = torch.zeros((n_heads, n_tokens), device=q.device, dtype=torch.float32)
    seq, start, n_prog = _cached_block_table(cu_seqlens, n_tokens, block_m)
    _attn_fwd_kernel[(n_prog, n_heads)](
        q, k, v, o, lse, cu_seqlens, seq, start,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
        lse.stride(0), sm_scale * 1.44269504,  # 1/ln(2): the kernel works with exp2
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        DOT_PRECISION=_dot_precision(q.dtype), **options,
    )  # fmt: skip
    return o, lse


def _attn_backward(do, q, k, v, o, lse, cu_seqlens, sm_scale, block_m=None, block_n=None):
    """Launch delta, dk/dv and dq kernels. Returns dq, dk, dv (T, H, D), contiguous."""
    n_tokens, n_heads, head_dim = q.shape
    n_seqs = cu_seqlens.numel() - 1
    block_m, block_n, block_d, options = _launch_config(n_tokens, n_seqs, head_dim, q.dtype, block_m, block_n)
    delta = torch.empty_like(lse)  # (H, T) fp32
    _attn_bwd_delta_kernel[(triton.cdiv(n_tokens, 64), n_heads)](
        o, do, delta, n_tokens, o.stride(0), o.stride(1), do.stride(0), do.stride(1), lse.stride(0),
        HEAD_DIM=head_dim, BLOCK_M=64, BLOCK_D=block_d,
    )  # fmt: skip
    dq = torch.zeros_like(q, memory_format=torch.contiguous_format)
    dk = torch.zeros_like(k, memory_format=torch.contiguous_format)
    dv = torch.zeros_like(v, memory_format=torch.contiguous_format)
    # dq, dk, dv share one contiguous (T, H, D) layout: strides (dq.stride(0), dq.stride(1), 1).
    common = (
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        lse.stride(0), dq.stride(0), dq.stride(1), sm_scale, sm_scale * 1.44269504,  # 1/ln(2)
    )  # fmt: skip
    meta = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
                DOT_PRECISION=_dot_precision(q.dtype), **options)  # fmt: skip
    seq, start, n_prog = _cached_block_table(cu_seqlens, n_tokens, block_n)
    _attn_bwd_dkdv_kernel[(n_prog, n_heads)](q, k, v, do, lse, delta, dk, dv, cu_seqlens, seq, start, *common, **meta)
    seq, start, n_prog = _cached_block_table(cu_seqlens, n_tokens, block_m)
    _attn_bwd_dq_kernel[(n_prog, n_heads)](q, k, v, do, lse, delta, dq, cu_seqlens, seq, start, *common, **meta)
    return dq, dk, dv


class BlockDiagAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, o and the (H, T) fp32 log-sum-exp; the backward recomputes P."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, sm_scale):
        o, lse = _attn_forward(q, k, v, cu_seqlens, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.sm_scale = sm_scale
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = _attn_backward(_last_dim_contiguous(do), q, k, v, o, lse, cu_seqlens, ctx.sm_scale)
        return dq, dk, dv, None, None


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _use_triton(t):
    """CUDA -> Triton; CPU -> Triton only under the interpreter; MEXMA_KERNELS=ref -> reference always."""
    if kernels_forced_ref():
        return False
    return t.is_cuda or (_INTERPRET and t.device.type == "cpu")


def _check_inputs(q, k, v, cu_seqlens, max_seqlen):
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one (total_tokens, n_heads, head_dim) shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")  # fmt: skip
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be int32 (n_seqs + 1,), got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}")
    if cu_seqlens.device.type == "cpu":  # value checks would force a host sync on CUDA
        lens = cu_seqlens[1:] - cu_seqlens[:-1]
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != q.shape[0] or bool((lens < 0).any()):
            raise ValueError(f"cu_seqlens must rise from 0 to total_tokens={q.shape[0]}, got {cu_seqlens.tolist()}")
        if max_seqlen is not None and int(lens.max()) > max_seqlen:
            raise ValueError(f"max_seqlen={max_seqlen} is below the longest sequence ({int(lens.max())})")


def block_diag_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None):
    """Block-diagonal attention over a packed stream; see the module docstring.

    q, k, v: (T, H, D) fp16/bf16/fp32; cu_seqlens: int32 (n_seqs + 1,); max_seqlen: longest sequence
    (checked on CPU, unused by the kernel's launch, kept for the FlashAttention varlen signature).
    Returns o: (T, H, D) in q's dtype, differentiable in q, k and v.
    """
    _check_inputs(q, k, v, cu_seqlens, max_seqlen)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    if not _use_triton(q) or q.shape[0] == 0:
        return block_diag_attention_ref(q, k, v, cu_seqlens, max_seqlen, scale)
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"block_diag_attention: the kernel takes fp16/bf16/fp32, got {q.dtype} (MEXMA_KERNELS=ref)")
    if q.shape[-1] > _MAX_HEAD_DIM:
        raise ValueError(f"block_diag_attention: head_dim {q.shape[-1]} > {_MAX_HEAD_DIM} (MEXMA_KERNELS=ref)")
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    return BlockDiagAttentionFunction.apply(q, k, v, cu_seqlens, float(scale))
