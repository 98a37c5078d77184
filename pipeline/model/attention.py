"""Block-diagonal attention for stock HF XLM-R modules over a packed (1, T) token stream, and its backend choice.

transformers 5 routes XLM-R attention through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` and passes
the model's extra keyword arguments (here `cu_seqlens`, `max_seqlen`) down to that function; for an
implementation name without a registered mask function, `create_bidirectional_mask` returns None, so no
(T, T) mask is ever built. Registering `"mexma_block_diag"` therefore keeps HF modules and weight names as
they are (the original forked 300 lines of RoBERTa for its xformers path).

Backends (`resolve_backend`):
- "kernel": `kernels.block_diag_attention` (Triton on CUDA; on CPU only under TRITON_INTERPRET=1, for tests);
- "varlen": `torch.nn.attention.varlen.varlen_attn`, FlashAttention's varlen kernel shipped in torch (CUDA,
  fp16/bf16 only; `varlen_attention` adapts our call to its signature);
- "sdpa": PyTorch SDPA over the sequences scattered into a padded (n, H, L_max, D) batch with a key padding
  mask. On CPU this beat a per-sequence SDPA loop and a (T, T) block-diagonal boolean mask (see docs/model.md);
- "ref": `kernels.block_diag_attention_ref`, one dense softmax per sequence in fp32.
"auto" without a start-up selection is "varlen" on CUDA in fp16/bf16 (else "sdpa"): an untested kernel is never
the silent default. `select_backend` (called through `MexmaModel.select_backends`) checks the Triton kernel
against the reference on the run's dtype and shapes and times it against "varlen"; the kernel is kept only when
it is right and not slower. `select_koleo` guards the fused KoLeo the same way. MEXMA_KERNELS=ref forces "ref".
"""

from __future__ import annotations

import functools
import inspect
import logging
import math

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

import kernels
from kernels import kernels_forced_ref

try:  # FlashAttention varlen as shipped in torch (2.9+); None where this torch has none
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - depends on the installed torch
    _varlen_attn = None

log = logging.getLogger(__name__)
ATTN_IMPLEMENTATION = "mexma_block_diag"
BACKENDS = ("auto", "kernel", "varlen", "sdpa", "ref")
_HALF = (torch.float16, torch.bfloat16)


def varlen_supported(device: torch.device, dtype: torch.dtype | None, head_dim: int | None = None) -> bool:
    """Whether varlen_attn can run: this torch ships it, CUDA, fp16/bf16, head_dim a multiple of 8 up to 256."""
    dims_ok = head_dim is None or (head_dim % 8 == 0 and head_dim <= 256)
    return _varlen_attn is not None and torch.device(device).type == "cuda" and dtype in _HALF and dims_ok


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Backend name for one call; "auto" -> varlen on CUDA in fp16/bf16, else sdpa (see the module docstring)."""
    if requested not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {requested!r}")
    if kernels_forced_ref() or requested == "ref":
        return "ref"
    if requested == "auto":
        return "varlen" if varlen_supported(device, dtype) else "sdpa"
    return requested


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
    """Block-diagonal attention on packed (T, H, D) q, k, v through one backend -> (T_q, H, D).

    Self-attention when cu_seqlens_k is None: q, k, v share cu_seqlens. Query subset otherwise (the models' last
    layers, which need outputs at a few rows only): sequence i's queries are q[cu_seqlens[i]:cu_seqlens[i+1]]
    and its keys / values k, v[cu_seqlens_k[i]:cu_seqlens_k[i+1]]; max_seqlen / max_seqlen_k bound the counts
    (python ints). The Triton kernel assumes self-attention (one cu_seqlens), so a query-subset call with
    backend "kernel" runs varlen on CUDA in fp16/bf16 and padded SDPA elsewhere. layout / kv_layout:
    `varlen_layout`s of the query and key grids for "sdpa" (built here when None).
    """
    backend = resolve_backend(backend, q.device, q.dtype)
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
    if backend == "kernel":  # self-attention only: see the docstring
        backend = "varlen" if varlen_supported(q.device, q.dtype, q.shape[-1]) else "sdpa"
    if backend == "varlen":
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale, cu_seqlens_k, max_seqlen_k)
    if backend == "ref":
        return subset_attention_ref(q, k, v, cu_seqlens, cu_seqlens_k, scale)
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
    backend = kwargs.get("attention_backend", "auto")
    out = packed_attention(q, k, v, cu_seqlens, max_seqlen, scaling, backend, dropout, kwargs.get("varlen_layout"))
    return out[None], None


AttentionInterface.register(ATTN_IMPLEMENTATION, block_diag_attention_forward)


# -- start-up selection (issue #10 part 4) ---------------------------------------------------------------------
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
    """Kernel forward and backward against the fp32 reference on the run's dtype and shapes (STYLE.md #3):
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


def _measure(what, fn, *args):
    """fn(*args), or {"ok": False, "error": ...} when it raises (a kernel that cannot compile is a failed check)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any failure of the candidate means: do not use it
        log.debug("%s raised", what, exc_info=True)
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def select_backend(device, dtype, n_heads, head_dim, lengths, check=None, timer=None) -> tuple[str, dict]:
    """Resolve attention="auto" for one (dtype, heads, head_dim) at start-up -> (backend name, report).

    On CUDA: `check` (default `check_attention_kernel`) runs the Triton kernel's forward and backward against
    the reference, `timer` (default `time_attention`) times it against the fallback ("varlen" where torch ships
    it for this dtype and head_dim, else "sdpa") on a batch of `lengths`. The kernel is chosen when it passes
    and is not slower; otherwise the fallback, with a warning that gives the error or the timing. Elsewhere:
    "sdpa" (CPU runs the kernel only under the interpreter). MEXMA_KERNELS=ref: "ref". The report (plain
    JSON types) says what was measured and why: log it and put it in the run's config.json.
    """
    device = torch.device(device)
    fallback = "varlen" if varlen_supported(device, dtype, head_dim) else "sdpa"
    report = {"dtype": str(dtype).removeprefix("torch."), "heads": n_heads, "head_dim": head_dim}
    report.update(tokens=int(sum(lengths)), seqs=len(lengths))
    if kernels_forced_ref():
        return "ref", {**report, "backend": "ref", "reason": "MEXMA_KERNELS=ref"}
    if device.type != "cuda":
        return "sdpa", {**report, "backend": "sdpa", "reason": f"no CUDA ({device.type}): padded SDPA"}
    report["check"] = _measure("attention check", check or check_attention_kernel, device, dtype, n_heads,
                               head_dim, lengths)  # fmt: skip
    if report["check"].get("ok"):
        report["ms"] = _measure("attention timing", timer or time_attention, device, dtype, n_heads, head_dim,
                                lengths, fallback)  # fmt: skip
    return _decide(report, "kernel", fallback, "attention")


def _error_text(check: dict) -> str:
    if isinstance(check.get("max_err"), float) and isinstance(check.get("tol"), float):
        return f"max error {check['max_err']:.3g} > tolerance {check['tol']:.3g}"
    return f"check returned {check}"


def _decide(report, kernel, fallback, what) -> tuple[str, dict]:
    """Kernel when its check passed and its timing is no slower than the fallback's; else the fallback, warned."""
    check, ms = report["check"], report.get("ms", {})
    if not check.get("ok"):
        why = check.get("error") or _error_text(check)
        reason = f"{what} kernel failed its check against the reference: {why}"
    elif "error" in ms:
        reason = f"{what} timing failed: {ms['error']}"
    elif ms[kernel] <= ms[fallback]:
        reason = f"{what} kernel right and not slower: {ms[kernel]:.3f} ms vs {fallback} {ms[fallback]:.3f} ms"
        log.info("%s backend: %s (%s)", what, kernel, reason)
        return kernel, {**report, "backend": kernel, "reason": reason}
    else:
        reason = f"{what} kernel slower: {ms[kernel]:.3f} ms vs {fallback} {ms[fallback]:.3f} ms (fwd+bwd)"
    log.warning("%s backend: %s, not the Triton kernel: %s", what, fallback, reason)
    return fallback, {**report, "backend": fallback, "reason": reason}


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


def select_koleo(device, dtype, batch, dim, check=None, timer=None) -> tuple[bool, dict]:
    """The fused KoLeo's start-up guard -> (use the kernel, report); same rules as `select_backend`.

    batch: rows per KoLeo call (pairs per micro batch, or the global batch with koleo_global); dim: hidden.
    Off CUDA it returns True and lets `kernels.koleo_loss` decide (the reference unless TRITON_INTERPRET=1).
    """
    device = torch.device(device)
    report = {"dtype": str(dtype).removeprefix("torch."), "rows": batch, "dim": dim}
    if kernels_forced_ref():
        return False, {**report, "backend": "ref", "reason": "MEXMA_KERNELS=ref"}
    if device.type != "cuda":
        return True, {**report, "backend": "koleo_loss", "reason": f"no CUDA ({device.type}): koleo_loss decides"}
    report["check"] = _measure("koleo check", check or check_koleo_kernel, device, dtype, batch, dim)
    if report["check"].get("ok"):
        report["ms"] = _measure("koleo timing", timer or time_koleo, device, dtype, batch, dim)
    name, report = _decide(report, "fused", "ref", "koleo")
    return name == "fused", report
