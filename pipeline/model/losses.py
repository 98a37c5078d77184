"""MEXMA losses, all in fp32: chunked tied-vocabulary cross-entropy, CLS alignment (MSE), KoLeo.

Per token the vocabulary projection costs about as much as the whole encoder (250k x 1024 for
xlm-roberta-large), so it runs only at masked positions and in chunks: `LinearCrossEntropy` computes logits
chunk by chunk, keeps only each row's log-sum-exp, and writes the gradients of the weighted loss during the
forward (as Liger-Kernel's fused linear cross-entropy does), so full logits never exist and the backward is a
scaling. The padded reference instead holds (B, L_max, V) logits per direction plus their softmax for backward.

Chunks: a byte budget per fp32 (rows, V) logits block (`chunk_rows`). By default (`device_chunk_bytes`) 1/64 of the
GPU's memory, between 256 MiB and 4 GiB: 1.2 GiB on an 80 GB card, about 1,300 rows at V = 250k, so a micro batch
of ~4,300 masked tokens takes 4 chunks (each re-reads the (V, H) weight and read-modify-writes the fp32 (V, H)
weight gradient, 1 GB for large); 256 MiB on CPUs. Extra memory: the block, its bf16 copy for the gradient
GEMMs, the padded weight (below) and the fp32 weight-gradient buffer.

GEMM shapes: the vocabulary dimension is padded to a multiple of VOCAB_MULTIPLE (250002 -> 250112) inside the
function, so every GEMM has aligned rows and whole tiles: one (V_pad, H) copy of the weight in the GEMM dtype per call
(under autocast that copy replaces per-chunk casts), its extra rows zero, the extra logits -inf (zero probability,
zero gradient). Parameters, checkpoints and exports keep the real V.

fp16 GEMMs are refused: the gradients written here are softmax x token weight (~1e-4 x p) and would be flushed to
zero in fp16 before any loss scale applies; use bf16 (or fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels

DEFAULT_CHUNK_BYTES = 256 * 2**20  # one (rows, V) fp32 logits block off CUDA; 256 MiB = 268 rows at V = 250k
MAX_CHUNK_BYTES = 4 * 2**30
VOCAB_MULTIPLE = 128  # GEMM vocabulary dimension rounded up to this (tensor-core tiles, 16-byte aligned rows)


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def device_chunk_bytes(device: torch.device | str) -> int:
    """Logits-block budget for `device`: 1/64 of a GPU's memory in [256 MiB, 4 GiB] (80 GB: 1.2 GiB); 256 MiB else."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_CHUNK_BYTES
    total = torch.cuda.get_device_properties(device).total_memory
    return int(min(MAX_CHUNK_BYTES, max(DEFAULT_CHUNK_BYTES, total // 64)))


def chunk_rows(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that a (rows, V) fp32 logits block stays within chunk_bytes (at least 1)."""
    return max(1, chunk_bytes // (4 * vocab_size))


def _matmul_dtype(weight: torch.Tensor) -> torch.dtype:
    """GEMM dtype: the autocast dtype when autocast is on (AMP with fp32 weights), else the weight's."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def _padded_operands(weight, bias, mm_dtype):
    """(V_pad, H) weight in the GEMM dtype with zero extra rows, (V_pad,) fp32 bias with -inf extra entries."""
    v = weight.shape[0]
    v_pad = padded_vocab(v)
    w = weight.detach().to(mm_dtype)
    b = bias.detach().float()
    if v_pad != v:
        w = torch.cat([w, w.new_zeros(v_pad - v, w.shape[1])])
        b = torch.cat([b, b.new_full((v_pad - v,), float("-inf"))])
    return w, b


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(h_i @ W^T + b, y_i) with gradients computed in the forward, chunk by chunk.

    h: (N, H); weight: (V, H) (tied to the word embeddings); bias: (V,); labels: (N,) int64; token_weight: (N,)
    fp32 (not differentiable). Returns (loss scalar fp32, per-token CE (N,) fp32, no gradient).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, labels, token_weight, rows):
        need_grad = any(ctx.needs_input_grad[:3])
        mm_dtype = _matmul_dtype(weight)
        if mm_dtype == torch.float16:
            raise ValueError("linear_cross_entropy: fp16 GEMMs would flush its gradients (softmax x token weight, "
                             "~1e-4 x p) to zero before any loss scale; use bf16 or fp32")  # fmt: skip
        v = weight.shape[0]
        w, b = _padded_operands(weight, bias, mm_dtype)  # (V_pad, H), (V_pad,)
        ce = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        grad_h = torch.zeros_like(h) if need_grad else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=h.device) if need_grad else None
        grad_b = torch.zeros(b.shape, dtype=torch.float32, device=h.device) if need_grad else None
        for start in range(0, h.shape[0], rows):
            hc, yc = h[start : start + rows].to(mm_dtype), labels[start : start + rows]
            logits = (hc @ w.t()).float() + b  # (n, V_pad) fp32, -inf beyond V
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            ce[start : start + rows] = lse - logits.gather(1, yc[:, None]).squeeze(1)
            if need_grad:
                # d CE / d logits = softmax - onehot, scaled by the token's weight; reuse the logits buffer.
                grad = logits.sub_(lse[:, None]).exp_()
                grad[torch.arange(len(yc), device=yc.device), yc] -= 1.0
                grad.mul_(token_weight[start : start + rows, None])
                g = grad.to(mm_dtype)
                grad_h[start : start + rows] = (g @ w).to(h.dtype)
                if mm_dtype == torch.float32:
                    grad_w.addmm_(g.t(), hc)
                else:  # bf16 GEMM (fp32 accumulation inside), chunk partial sums added in fp32
                    grad_w.add_(g.t() @ hc)
                grad_b.add_(grad.sum(dim=0))
        if need_grad:
            grad_w, grad_b = grad_w[:v], grad_b[:v]
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
    """Weighted tied-vocabulary cross-entropy; see `LinearCrossEntropy`. Returns (loss, per-token CE).

    rows: chunk height; default from `device_chunk_bytes` of the weight's device."""
    if h.shape[0] != labels.shape[0] or labels.shape != token_weight.shape:
        raise ValueError(
            f"shape mismatch: h {tuple(h.shape)}, labels {tuple(labels.shape)}, "
            f"token_weight {tuple(token_weight.shape)}"
        )
    rows = rows or chunk_rows(padded_vocab(weight.shape[0]), device_chunk_bytes(weight.device))
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
    """KoLeo of (B, D) rows in fp32; zero (connected to the graph) when B < 2, where no neighbour exists.

    use_kernel: the model's resolved choice (`Backends.koleo`, pipeline/model/backends.py)."""
    if x.shape[0] < 2:
        return (x.sum() * 0.0).float()
    fn = kernels.koleo_loss if use_kernel else kernels.koleo_loss_ref
    return fn(x.float(), eps=eps)
