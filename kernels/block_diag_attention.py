"""Block-diagonal (varlen) attention over a packed token stream.

Token i attends to token j only when both lie in the same sequence of `cu_seqlens`
(FlashAttention's varlen convention). The Triton kernel lands beside this reference.
"""

import torch


def block_diag_attention_ref(q, k, v, cu_seqlens, max_seqlen=None, softmax_scale=None):
    """Plain PyTorch reference: one dense softmax attention per sequence.

    q, k, v: (T, H, D); cu_seqlens: int32 (n_seqs + 1,). Returns o: (T, H, D) in q's dtype.
    """
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    bounds = cu_seqlens.tolist()
    out = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (H, L, D)
        scores = torch.matmul(qs.float(), ks.float().transpose(-1, -2)) * scale  # (H, L, L)
        probs = torch.softmax(scores, dim=-1)
        out.append(torch.matmul(probs, vs.float()).transpose(0, 1).to(q.dtype))  # (L, H, D)
    return torch.cat(out, dim=0) if out else q.new_empty(q.shape)


def block_diag_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None):
    """Public entry point; see the module docstring."""
    return block_diag_attention_ref(q, k, v, cu_seqlens, max_seqlen, softmax_scale)
