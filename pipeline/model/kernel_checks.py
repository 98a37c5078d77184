"""Start-up measurements of the Triton kernels on the run's device, dtype and shapes: right, and how fast.

`check_*` compares a kernel's forward and backward with the upcast reference (the kernel's error at most twice the
same-precision PyTorch error plus a small atol, as the kernel tests do); `time_*` times forward + backward against
the fallback with `triton.testing.do_bench`. pipeline/model/backends.py decides from these numbers.
"""

from __future__ import annotations

import torch

import kernels
from pipeline.model.attention import padded_sdpa, varlen_attention, varlen_layout


def _packed_qkv(device, dtype, n_heads, head_dim, lengths, seed=0):
    """Random (T, H, D) q, k, v, do and int32 cu_seqlens for a packed batch of `lengths` (fixed seed)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    n_tokens = int(sum(lengths))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q, k, v, do = (torch.randn(n_tokens, n_heads, head_dim, generator=gen, device=device, dtype=dtype) for _ in "qkvd")
    return q, k, v, do, cu


def _check_lengths(lengths, max_tokens=4096):
    """The leading sequences of the run's batch, up to max_tokens: the per-sequence reference stays cheap."""
    out, total = [], 0
    for n in lengths:
        if out and total + n > max_tokens:
            break
        out.append(int(n))
        total += int(n)
    return out


def _max_err(got, ref):
    return max((a.double() - b.double()).abs().max().item() for a, b in zip(got, ref))


def _fwd_bwd(fn, inputs, do):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, do)
    return [out.detach(), *grads]


def check_attention_kernel(device, dtype, n_heads, head_dim, lengths) -> dict:
    """Kernel forward and backward against the fp32 reference on the run's dtype and shapes:
    ok when its max error over o, dq, dk, dv is at most 2x the same-precision reference's error + 1e-3 (scaled)."""
    lens = _check_lengths(lengths)
    q, k, v, do, cu = _packed_qkv(device, dtype, n_heads, head_dim, lens)
    max_len = max(lens)
    got = _fwd_bwd(lambda q, k, v: kernels.block_diag_attention(q, k, v, cu, max_len), (q, k, v), do)
    up = [t.float() for t in (q, k, v)]
    ref = _fwd_bwd(lambda q, k, v: kernels.block_diag_attention_ref(q, k, v, cu, max_len), up, do.float())
    same = _fwd_bwd(lambda q, k, v: kernels.block_diag_attention_ref(q, k, v, cu, max_len, upcast=False), (q, k, v), do)
    err, err_pt = _max_err(got, ref), _max_err(same, ref)
    scale = max(1.0, max(t.abs().max().item() for t in ref))
    tol = 2 * err_pt + 1e-3 * scale
    return {"ok": bool(err <= tol), "max_err": err, "tol": tol, "tokens": sum(lens)}


def _bench_ms(fn, inputs, do) -> float:
    """Median ms of forward + backward (triton.testing.do_bench: CUDA events, warm-up, L2 flush)."""
    import triton

    inputs = [t.detach().requires_grad_() for t in inputs]
    return float(triton.testing.do_bench(lambda: fn(*inputs).backward(do), grad_to_none=inputs, return_mode="median"))


def time_attention(device, dtype, n_heads, head_dim, lengths, fallback: str) -> dict:
    """fwd+bwd ms of the kernel and of the fallback backend on a packed batch of the run's `lengths`."""
    q, k, v, do, cu = _packed_qkv(device, dtype, n_heads, head_dim, lengths)
    max_len, scale = max(lengths), head_dim**-0.5
    fns = {
        "kernel": lambda q, k, v: kernels.block_diag_attention(q, k, v, cu, max_len, scale),
        "varlen": lambda q, k, v: varlen_attention(q, k, v, cu, max_len, scale),
        "sdpa": lambda q, k, v: padded_sdpa(q, k, v, cu, scale, layout=varlen_layout(cu, max_len, q.shape[0])),
    }
    return {name: _bench_ms(fns[name], (q, k, v), do) for name in ("kernel", fallback)}


def check_koleo_kernel(device, dtype, batch, dim) -> dict:
    """Fused KoLeo loss and gradient against the float64 reference, tolerance as check_attention_kernel's."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, dim, generator=gen, device=device, dtype=dtype)
    got = _fwd_bwd(lambda x: kernels.koleo_loss(x), (x,), None)
    ref = _fwd_bwd(lambda x: kernels.koleo_loss_ref(x), (x.double(),), None)
    same = _fwd_bwd(lambda x: kernels.koleo_loss_ref(x), (x.float(),), None)
    err, err_pt = _max_err(got, ref), _max_err(same, ref)
    tol = 2 * err_pt + 1e-4 * max(1.0, max(t.abs().max().item() for t in ref))
    return {"ok": bool(err <= tol), "max_err": err, "tol": tol, "rows": batch}


def time_koleo(device, dtype, batch, dim) -> dict:
    """fwd+bwd ms of the fused KoLeo and of its reference."""
    x = torch.randn(batch, dim, device=device, dtype=dtype)
    one = torch.ones((), device=device)
    fns = {"fused": kernels.koleo_loss, "ref": kernels.koleo_loss_ref}
    return {name: _bench_ms(fn, (x,), one) for name, fn in fns.items()}
