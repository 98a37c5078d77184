"""Fused KoLeo regulariser (Sablayrolles et al. 2018; DINOv2's KoLeoLoss, as MEXMA uses it).

loss = -mean_i log(||xn_i - xn_nn(i)||_2 + eps), xn = x / max(||x||, eps) row-wise, nn(i) = argmax_{j != i}
<xn_i, xn_j> (no gradient through the index), all in fp32.

Fused: the nearest-neighbour search is a tiled Triton GEMM whose epilogue keeps only a running max and
its index per row, so memory is O(B*D) and the B x B matrix never exists (the reference builds it).
Then one kernel computes the distances; the backward sends each row's gradient through itself and its
neighbour and through the normalisation, gathering the rows that chose it as neighbour through a
CSR list (stable argsort of the neighbour indices): no atomics, deterministic.

Tested: CPU under TRITON_INTERPRET=1 with fp32 and fp16 inputs (tests/kernels). Written for CUDA
fp16/bf16/fp32 inputs; everything after the input load is fp32.

Caution:
- The search dots follow torch.get_float32_matmul_precision(), the setting that governs the reference's
  `x @ x.t()`: "highest" (the default) runs 3xTF32 on CUDA tensor cores (split-operand, error ~1e-6 on a
  dot of unit rows, against ~1e-7 for IEEE fp32 FMA at several times the cost), "high"/"medium" run TF32,
  where near-ties within TF32 rounding (~1e-3) may pick another neighbour than fp32 would. Distances,
  the loss and the backward are IEEE fp32 whatever the setting.
- Ties pick the smallest index. Duplicated rows have distance 0 and loss -log(eps) (finite) with zero
  gradient through that distance, as torch's norm backward gives. B = 1 follows the reference
  (the row is its own neighbour: loss -log(eps), zero gradient).
- The backward's per-row gather loops over the rows that chose it; a hub chosen by many rows makes
  one long program (at most B rows).
- D <= 16384 (one row per program in the row-wise kernels).
- MEXMA_KERNELS=ref sends every call to `koleo_loss_ref`; CPU tensors use the kernel only when
  TRITON_INTERPRET=1 was set before `kernels` was imported.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels._env import kernels_forced_ref

_INTERPRET = bool(triton.knobs.runtime.interpret)  # fixed when the @triton.jit kernels below are decorated
_MAX_DIM = 16384


def koleo_loss_ref(x, eps=1e-8):
    """DINOv2-style reference. x: (B, D) -> scalar, fp32 (float64 when x is float64, for upcast tests).

    L2-normalise rows, nearest other row by inner product (argmax, no gradient through the
    index), then -mean(log(||x_i - x_nn(i)||_2 + eps)).
    """
    x = F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), p=2, dim=-1, eps=eps)  # (B, D)
    with torch.no_grad():
        dots = x @ x.t()  # (B, B)
        dots.fill_diagonal_(-2.0)  # never pick oneself; normalised dots lie in [-1, 1]
        nn_idx = dots.argmax(dim=1)  # (B,)
    dist = torch.linalg.vector_norm(x - x[nn_idx], ord=2, dim=-1)  # (B,)
    return -torch.log(dist + eps).mean()


@triton.jit
def _koleo_normalize_kernel(X, XN, NORM, stride_xb, D, eps, BLOCK_D: tl.constexpr):
    # One row per program: norm in fp32, xn = x / max(norm, eps) (F.normalize). XN: (B, D) fp32 contiguous.
    tl.static_assert(BLOCK_D <= 16384)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    x = tl.load(X + row * stride_xb + offs, mask=offs < D, other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(x * x, 0))
    tl.store(XN + row * D + offs, x / tl.maximum(norm, eps), mask=offs < D)
    tl.store(NORM + row, norm)


@triton.jit
def _koleo_nn_kernel(
    XN, NN, B, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # Rows [pid*BLOCK_M, +BLOCK_M) against every column tile: S = XN_rows @ XN_cols^T (fp32 accumulate),
    # keep the running (max, argmax) per row. Strict '>' across tiles + tie_break_left inside a tile
    # give the smallest index among ties, like torch.argmax.
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_M], tl.int32)
    for start_n in range(0, B, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for start_k in range(0, D, BLOCK_K):
            ks = start_k + offs_k
            a = tl.load(XN + rows.to(tl.int64)[:, None] * D + ks[None, :],
                        mask=(rows < B)[:, None] & (ks < D)[None, :], other=0.0)  # fmt: skip
            bt = tl.load(XN + cols.to(tl.int64)[None, :] * D + ks[:, None],
                         mask=(cols < B)[None, :] & (ks < D)[:, None], other=0.0)  # fmt: skip
            acc = tl.dot(a, bt, acc, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        acc = tl.where(rows[:, None] == cols[None, :], -2.0, acc)  # never oneself; dots lie in [-1, 1]
        acc = tl.where((cols < B)[None, :], acc, float("-inf"))
        tile_max, tile_idx = tl.max(acc, 1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_max > best
        best_idx = tl.where(better, start_n + tile_idx, best_idx)
        best = tl.where(better, tile_max, best)
    tl.store(NN + rows, best_idx, mask=rows < B)


@triton.jit
def _koleo_dist_kernel(XN, NN, DIST, D, BLOCK_D: tl.constexpr):
    # DIST[i] = ||xn_i - xn_nn(i)||_2 in fp32, one row per program.
    row = tl.program_id(0).to(tl.int64)
    nn = tl.load(NN + row).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    xi = tl.load(XN + row * D + offs, mask=offs < D, other=0.0)
    xj = tl.load(XN + nn * D + offs, mask=offs < D, other=0.0)
    diff = xi - xj
    tl.store(DIST + row, tl.sqrt(tl.sum(diff * diff, 0)))


@triton.jit
def _koleo_bwd_kernel(XN, NORM, NN, COEF, IN_ORDER, IN_START, DX, stride_dxb, D, eps, BLOCK_D: tl.constexpr):
    # Row r's gradient w.r.t. xn_r: G_r = c_r (xn_r - xn_nn(r)) - sum_{i: nn(i) = r} c_i (xn_i - xn_r),
    # with c_i = dL/dd_i / d_i (0 where d_i = 0). Through xn = x / max(|x|, eps):
    # dx = (G - xn <xn, G>) / |x| when |x| > eps, else G / eps.
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    xr = tl.load(XN + row * D + offs, mask=mask, other=0.0)
    nn = tl.load(NN + row).to(tl.int64)
    xj = tl.load(XN + nn * D + offs, mask=mask, other=0.0)
    g = tl.load(COEF + row) * (xr - xj)
    for pos in range(tl.load(IN_START + row), tl.load(IN_START + row + 1)):
        i = tl.load(IN_ORDER + pos).to(tl.int64)
        xi = tl.load(XN + i * D + offs, mask=mask, other=0.0)
        g -= tl.load(COEF + i) * (xi - xr)
    norm = tl.load(NORM + row)
    proj = tl.where(norm > eps, tl.sum(xr * g, 0), 0.0)
    dx = (g - xr * proj) / tl.maximum(norm, eps)
    tl.store(DX + row * stride_dxb + offs, dx.to(DX.dtype.element_ty), mask=mask)


def _search_config(D):
    """Search tiles: 64 x 64 output tiles, K chunks of 32 (64 x 32 fp32 operands = 8 KiB each). Untuned."""
    return 64, 64, min(32, max(16, triton.next_power_of_2(D)))


def _koleo_forward(x, eps, block_m=None, block_n=None):
    """Launch normalise, search and distance kernels. x: (B, D), last dim contiguous.

    Returns loss (fp32 scalar), xn (B, D) fp32, norm (B,) fp32, nn (B,) int32, dist (B,) fp32.
    """
    B, D = x.shape
    block_d = triton.next_power_of_2(D)
    xn = torch.empty((B, D), device=x.device, dtype=torch.float32)
    norm = torch.empty(B, device=x.device, dtype=torch.float32)
    _koleo_normalize_kernel[(B,)](x, xn, norm, x.stride(0), D, eps, BLOCK_D=block_d)
    bm, bn, bk = _search_config(D)
    bm, bn = block_m or bm, block_n or bn
    nn = torch.empty(B, device=x.device, dtype=torch.int32)
    precision = "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"  # the interpreter: IEEE
    _koleo_nn_kernel[(triton.cdiv(B, bm),)](xn, nn, B, D, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_PRECISION=precision)
    dist = torch.empty(B, device=x.device, dtype=torch.float32)
    _koleo_dist_kernel[(B,)](xn, nn, dist, D, BLOCK_D=block_d)
    loss = -torch.log(dist + eps).mean()
    return loss, xn, norm, nn, dist


def _koleo_backward(grad_loss, x_dtype, xn, norm, nn, dist, eps):
    """Launch the backward kernel. grad_loss: fp32 scalar tensor. Returns dx (B, D) in x_dtype."""
    B, D = xn.shape
    # dL/dd_i = -grad / (B (d_i + eps)); d d_i / d xn_i = (xn_i - xn_nn) / d_i, taken as 0 at d_i = 0.
    safe = torch.where(dist > 0, dist, torch.ones_like(dist))
    coef = torch.where(dist > 0, -grad_loss / (B * (dist + eps) * safe), torch.zeros_like(dist))  # (B,)
    nn_long = nn.long()
    nn_sorted, in_order = torch.sort(nn_long, stable=True)  # rows grouped by the neighbour they chose
    # CSR offsets: in_start[j] = #rows whose neighbour is < j. searchsorted, not bincount: CUDA's bincount
    # reads max(input) back to the host, a sync inside every step.
    in_start = torch.searchsorted(nn_sorted, torch.arange(B + 1, device=xn.device))  # (B + 1,) int64
    in_order = in_order.to(torch.int32)
    dx = torch.empty((B, D), device=xn.device, dtype=x_dtype)
    _koleo_bwd_kernel[(B,)](xn, norm, nn, coef, in_order, in_start.to(torch.int32), dx, dx.stride(0), D, eps,
                            BLOCK_D=triton.next_power_of_2(D))  # fmt: skip
    return dx


class KoLeoFunction(torch.autograd.Function):
    """Autograd wrapper: saves xn (B, D) fp32, norm, nn and dist (B,); O(B*D) memory."""

    @staticmethod
    def forward(ctx, x, eps):
        loss, xn, norm, nn, dist = _koleo_forward(x, eps)
        ctx.save_for_backward(xn, norm, nn, dist)
        ctx.eps, ctx.x_dtype = eps, x.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        xn, norm, nn, dist = ctx.saved_tensors
        return _koleo_backward(grad_loss.float(), ctx.x_dtype, xn, norm, nn, dist, ctx.eps), None


def _use_triton(t):
    """CUDA -> Triton; CPU -> Triton only under the interpreter; MEXMA_KERNELS=ref -> reference always."""
    if kernels_forced_ref():
        return False
    return t.is_cuda or (_INTERPRET and t.device.type == "cpu")


def koleo_loss(x, eps=1e-8):
    """KoLeo loss of the rows of x: (B, D) fp16/bf16/fp32 -> fp32 scalar; see the module docstring."""
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"koleo_loss expects a non-empty (B, D) matrix, got shape {tuple(x.shape)}")
    if not _use_triton(x):
        return koleo_loss_ref(x, eps)
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"koleo_loss: the kernel takes fp16/bf16/fp32, got {x.dtype} (MEXMA_KERNELS=ref takes any)")
    if x.shape[1] > _MAX_DIM:
        raise ValueError(f"koleo_loss: D={x.shape[1]} > {_MAX_DIM} is not supported by the kernel (MEXMA_KERNELS=ref)")
    return KoLeoFunction.apply(x if x.stride(-1) == 1 else x.contiguous(), float(eps))
