"""MEXMA losses, all in fp32: chunked tied-vocabulary cross-entropy, CLS alignment (MSE), KoLeo.

Per token the vocabulary projection costs about as much as the whole encoder (250k x 1024 for
xlm-roberta-large), so it runs only at masked positions and in chunks: `LinearCrossEntropy` computes logits
chunk by chunk, keeps only each row's log-sum-exp, and writes the gradients of the weighted loss during the
forward (as Liger-Kernel's fused linear cross-entropy does), so full logits never exist and the backward is a
scaling. Extra memory: one (rows, V) fp32 logits block, sized from a byte budget (`chunk_rows`: 256 MiB =
268 rows at V = 250k), plus an fp32 (V, H) weight-gradient buffer (250k x 1024 x 4 B = 1 GB for large).
The padded reference instead holds (B, L_max, V) logits per direction plus their softmax for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels
from kernels import kernels_forced_ref

DEFAULT_CHUNK_BYTES = 256 * 2**20  # one (rows, V) fp32 logits block; 256 MiB = 268 rows at V = 250k


def chunk_rows(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that a (rows, V) fp32 logits block stays within chunk_bytes (at least 1)."""
    return max(1, chunk_bytes // (4 * vocab_size))


def _chunk_logits(h, weight, bias):
    """(n, H) @ (V, H)^T + (V,) -> fp32 (n, V); the GEMM runs in the inputs' dtype (bf16 on GPUs)."""
    return (h @ weight.t()).float() + bias.float()


def _matmul_dtype(weight: torch.Tensor) -> torch.dtype:
    """GEMM dtype: the autocast dtype when autocast is on (AMP with fp32 weights), else the weight's."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(h_i @ W^T + b, y_i) with gradients computed in the forward, chunk by chunk.

    h: (N, H); weight: (V, H) (tied to the word embeddings); bias: (V,); labels: (N,) int64; token_weight: (N,)
    fp32 (not differentiable). Returns (loss scalar fp32, per-token CE (N,) fp32, no gradient).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, labels, token_weight, rows):
        need_grad = any(ctx.needs_input_grad[:3])
        mm_dtype = _matmul_dtype(weight)
        ce = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        grad_h = torch.zeros_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_grad else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=h.device) if need_grad else None
        for start in range(0, h.shape[0], rows):
            hc, yc = h[start : start + rows], labels[start : start + rows]
            logits = _chunk_logits(hc, weight, bias)  # (n, V) fp32
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            ce[start : start + rows] = lse - logits.gather(1, yc[:, None]).squeeze(1)
            if need_grad:
                # d CE / d logits = softmax - onehot, scaled by the token's weight; reuse the logits buffer.
                grad = logits.sub_(lse[:, None]).exp_()
                grad[torch.arange(len(yc), device=yc.device), yc] -= 1.0
                grad.mul_(token_weight[start : start + rows, None])
                grad_h[start : start + rows] = (grad.to(mm_dtype) @ weight.to(mm_dtype)).to(h.dtype)
                if mm_dtype == torch.float32:
                    grad_w.addmm_(grad.t(), hc.float())
                else:  # bf16/fp16 GEMM (fp32 accumulation inside), chunk partial sums added in fp32
                    grad_w.add_(grad.t().to(mm_dtype) @ hc.to(mm_dtype))
                grad_b.add_(grad.sum(dim=0))
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.weight_dtype, ctx.bias_dtype = weight.dtype, bias.dtype
        ctx.mark_non_differentiable(ce)
        return (ce * token_weight).sum(), ce

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        g = grad_loss.float()
        out_h = (grad_h * g).to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        out_w = (grad_w * g).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        out_b = (grad_b * g).to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return out_h, out_w, out_b, None, None, None


def linear_cross_entropy(h, weight, bias, labels, token_weight, rows: int | None = None):
    """Weighted tied-vocabulary cross-entropy; see `LinearCrossEntropy`. Returns (loss, per-token CE)."""
    if h.shape[0] != labels.shape[0] or labels.shape != token_weight.shape:
        raise ValueError(
            f"shape mismatch: h {tuple(h.shape)}, labels {tuple(labels.shape)}, "
            f"token_weight {tuple(token_weight.shape)}"
        )
    rows = rows or chunk_rows(weight.shape[0])
    if h.shape[0] == 0:  # no masked token at all: a zero that still connects to the graph
        zero = (h.sum() * 0.0).float() + (weight.sum() * 0.0).float() + (bias.sum() * 0.0).float()
        return zero, h.new_empty(0, dtype=torch.float32)
    return LinearCrossEntropy.apply(h, weight, bias, labels, token_weight.float(), rows)


def cls_alignment_loss(src_cls: torch.Tensor, trg_cls: torch.Tensor) -> torch.Tensor:
    """MSE between clean src and clean trg CLS, mean over B x H elements (torch.nn.MSELoss), fp32."""
    return F.mse_loss(src_cls.float(), trg_cls.float())


def gather_for_koleo(x: torch.Tensor, global_batch: bool) -> torch.Tensor:
    """All-gather (B, H) rows from every rank with autograd when asked and distributed is up.

    Every rank then computes the same global KoLeo; all_gather's backward sums each rank's gradient into the
    local rows (world x the gradient of the shared loss), which the data-parallel mean over ranks divides back.
    """
    from runtime import collectives

    return collectives.all_gather_autograd(x) if global_batch else x


def koleo(x: torch.Tensor, eps: float = 1e-8, use_kernel: bool = True) -> torch.Tensor:
    """KoLeo of (B, D) rows in fp32; zero (connected to the graph) when B < 2, where no neighbour exists."""
    if x.shape[0] < 2:
        return (x.sum() * 0.0).float()
    fn = kernels.koleo_loss if use_kernel and not kernels_forced_ref() else kernels.koleo_loss_ref
    return fn(x.float(), eps=eps)
