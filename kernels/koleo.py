"""KoLeo regulariser (Sablayrolles et al. 2018; DINOv2's KoLeoLoss, as MEXMA uses it).

The fused Triton kernel lands beside this reference.
"""

import torch
import torch.nn.functional as F


def koleo_loss_ref(x, eps=1e-8):
    """DINOv2-style reference. x: (B, D) -> scalar fp32.

    L2-normalise rows, nearest other row by inner product (argmax, no gradient through the
    index), then -mean(log(||x_i - x_nn(i)||_2 + eps)).
    """
    x = F.normalize(x.float(), p=2, dim=-1, eps=eps)  # (B, D)
    with torch.no_grad():
        dots = x @ x.t()  # (B, B)
        dots.fill_diagonal_(-2.0)  # never pick oneself; normalised dots lie in [-1, 1]
        nn_idx = dots.argmax(dim=1)  # (B,)
    dist = torch.linalg.vector_norm(x - x[nn_idx], ord=2, dim=-1)  # (B,)
    return -torch.log(dist + eps).mean()


def koleo_loss(x, eps=1e-8):
    """Public entry point; see the module docstring."""
    return koleo_loss_ref(x, eps)
