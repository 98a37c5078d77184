"""Benchmark block_diag_attention against varlen_attn, FlexAttention with a document mask, padded SDPA, the reference.

Packed batches of 8k-64k tokens whose lengths follow (a) the prepared data's token lengths (`--data`,
default data/prepared when present) and (b) a synthetic lognormal with mean 40 tokens clipped to [2, 200];
16 heads x 64 and 8 heads x 128; bf16 by default. Forward, backward and both: ms (triton.testing.do_bench),
TFLOP/s on real tokens, peak extra memory.

FLOP model (real tokens only; padding and masked-out pairs count for no method):
  forward  = 4 * sum_s L_s^2 * H * D   (QK^T and PV, 2 * L^2 * D each per head)
  backward = 2.5 * forward             (dV, dP, dQ, dK plus the recomputed QK^T: 5 matmuls vs 2)
Baselines, in this order: `torch.nn.attention.varlen.varlen_attn` (FlashAttention's varlen kernel as shipped
in torch; CUDA fp16/bf16 only, skipped elsewhere with a note) on the same packed (T, H, D) stream;
Flex and padded SDPA get their inputs in their own layout, prepared outside the timed region: padded SDPA a
(n_seqs, H, L_pad, D) batch (L_max rounded up to 16) with a key-padding mask (the fastest SDPA backend
that accepts it), Flex a (1, H, T, D) stream and a BlockMask built once per batch, flex_attention compiled
once per head shape (a new token count recompiles it: `--tokens` with one value compiles it once per head shape).

Run: PYTHONPATH=. python kernels/bench/bench_block_diag_attention.py [--data DIR] [--csv out.csv]
Without CUDA it prints a message and exits 0; `--smoke` (with TRITON_INTERPRET=1) runs a tiny CPU
shape through every code path, which is not a performance figure.
"""

import argparse
import contextlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kernels import block_diag_attention, block_diag_attention_ref
from kernels.bench.common import (
    NOT_A_FIGURE,
    environment,
    exit_without_cuda,
    peak_extra_mib,
    print_header,
    print_table,
    time_ms,
    write_csv,
)

COMMAND = "PYTHONPATH=. python kernels/bench/bench_block_diag_attention.py"


def prepared_lengths(data_dir):
    """Token lengths (with <s>, </s>) of both sides of DIR/train from a prepared dataset (shared contract 1)."""
    import datasets
    import pyarrow.compute as pc

    table = datasets.load_from_disk(str(Path(data_dir) / "train")).data
    cols = [pc.list_value_length(table.column(name)).to_numpy() for name in ("src_ids", "trg_ids")]
    return np.concatenate(cols).astype(np.int64)


def lognormal_lengths(rng, n=200_000, mean=40.0, sigma=0.6, lo=2, hi=200):
    """Synthetic sentence lengths: lognormal with E[L] = exp(mu + sigma^2 / 2) = mean, clipped to [lo, hi]."""
    mu = math.log(mean) - sigma**2 / 2
    return np.clip(np.rint(rng.lognormal(mu, sigma, n)), lo, hi).astype(np.int64)


def pack(pool, n_tokens, rng):
    """Lengths drawn from pool while they fit, then one sequence of the remainder: exactly n_tokens tokens."""
    draws = rng.choice(pool, size=n_tokens, replace=True)  # (n_tokens,): more than enough, every length >= 1
    fit = int(np.searchsorted(np.cumsum(draws), n_tokens, side="right"))  # longest prefix with sum <= n_tokens
    lens = draws[:fit].tolist()
    rest = n_tokens - sum(lens)
    return lens + [rest] if rest > 0 else lens


def _packed_inputs(lens, n_heads, head_dim, dtype, device):
    T = sum(lens)
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device=device)  # (S + 1,)
    q, k, v, do = (torch.randn(T, n_heads, head_dim, dtype=dtype, device=device) for _ in range(4))  # (T, H, D)
    return q, k, v, do, cu


def method_ours(q, k, v, cu, lens):
    max_len = max(lens)
    return lambda q, k, v: block_diag_attention(q, k, v, cu, max_len), (q, k, v)


def method_reference(q, k, v, cu, lens):
    return lambda q, k, v: block_diag_attention_ref(q, k, v, cu), (q, k, v)


def varlen_available(q):
    """varlen_attn runs on CUDA in fp16/bf16 with torch >= 2.9; the reason it does not, else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"varlen_attn: not in torch {torch.__version__}"
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return f"varlen_attn: skipped on {q.device.type} {str(q.dtype).removeprefix('torch.')} (CUDA fp16/bf16 only)"
    return None


def method_varlen(q, k, v, cu, lens):
    """FlashAttention varlen through torch: the same packed stream and cu_seqlens, scale 1/sqrt(D) as ours."""
    from torch.nn.attention.varlen import varlen_attn

    max_len = max(lens)
    return lambda q, k, v: varlen_attn(q, k, v, cu, cu, max_len, max_len), (q, k, v)


_FLEX: dict = {}  # (n_heads, head_dim) -> compiled flex_attention: compiled once per head shape
_MASKS: dict = {}  # batch lengths -> BlockMask: built once per batch, shared by the head shapes


def method_flex(q, k, v, cu, lens):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    T, n_heads, head_dim = q.shape
    key = (tuple(lens), str(q.device))
    if key not in _MASKS:
        doc = torch.repeat_interleave(torch.arange(len(lens), device=q.device), torch.tensor(lens, device=q.device))

        def document(b, h, q_idx, kv_idx):
            return doc[q_idx] == doc[kv_idx]

        build = torch.compile(create_block_mask)
        _MASKS[key] = build(document, B=None, H=None, Q_LEN=T, KV_LEN=T, device=q.device)
    if (n_heads, head_dim) not in _FLEX:
        _FLEX[n_heads, head_dim] = torch.compile(flex_attention, dynamic=False)
    flex, mask = _FLEX[n_heads, head_dim], _MASKS[key]
    to_bhtd = lambda t: t.transpose(0, 1).unsqueeze(0).contiguous()  # (T, H, D) -> (1, H, T, D)
    return lambda q, k, v: flex(q, k, v, block_mask=mask), tuple(to_bhtd(t) for t in (q, k, v))


def method_sdpa_padded(q, k, v, cu, lens, backend):
    from torch.nn.attention import sdpa_kernel

    max_len = -(-max(lens) // 16) * 16  # a multiple of 16: the fused SDPA kernels want aligned mask rows
    valid = torch.arange(max_len, device=q.device)[None, :] < torch.tensor(lens, device=q.device)[:, None]  # (S, L)

    def to_padded(t):  # (T, H, D) -> (S, H, L_max, D), zeros in the padding
        out = t.new_zeros(len(lens), max_len, *t.shape[1:])
        out[valid] = t
        return out.transpose(1, 2).contiguous()

    key_mask = valid[:, None, None, :]  # (S, 1, 1, L_max): padded keys never attended

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)

    return fn, tuple(to_padded(t) for t in (q, k, v))


def measure(fn, inputs, do_like, smoke):
    """ms forward, backward, forward+backward and peak extra MiB of forward+backward."""
    inputs = tuple(t.detach().requires_grad_() for t in inputs)
    out = fn(*inputs)
    do = torch.randn_like(out) if do_like is None else do_like
    ms_fwd = time_ms(lambda: fn(*inputs), smoke)
    ms_bwd = time_ms(lambda: out.backward(do, retain_graph=True), smoke, grad_to_none=list(inputs))
    ms_both = time_ms(lambda: fn(*inputs).backward(do), smoke, grad_to_none=list(inputs))
    out = None  # free the retained graph before the memory measurement
    for t in inputs:
        t.grad = None
    mib = peak_extra_mib(lambda: fn(*inputs).backward(do))
    return ms_fwd, ms_bwd, ms_both, mib


def _best_sdpa(q, k, v, cu, lens, smoke):
    """The fastest SDPA backend that accepts a boolean mask on this device."""
    from torch.nn.attention import SDPBackend

    best = None
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        try:
            fn, inputs = method_sdpa_padded(q, k, v, cu, lens, backend)
            with warnings.catch_warnings():  # an unavailable backend warns why before it raises
                warnings.simplefilter("ignore", UserWarning)
                ms = time_ms(lambda fn=fn, inputs=inputs: fn(*inputs), smoke)
        except RuntimeError:
            continue  # backend unavailable for this dtype / mask / device
        if best is None or ms < best[0] or smoke:
            best = (ms, backend.name.lower(), fn, inputs)
        if smoke:
            break
    return best


def check_agreement(q, k, v, cu, lens):
    """Guard the benchmark against timing a wrong kernel: ours vs the fp32 reference on this batch."""
    out = block_diag_attention(q, k, v, cu, max(lens)).float()
    ref = block_diag_attention_ref(q, k, v, cu).float()
    err = (out - ref).abs().max().item()
    tol = 1e-4 if q.dtype == torch.float32 else 2e-2
    if not err <= tol:
        raise SystemExit(f"block_diag_attention disagrees with the reference: max |diff| {err:.3e} > {tol}")
    return err


@contextlib.contextmanager
def tiles_env(tiles):
    """Run block_diag_attention with MEXMA_ATTN_TILES=tiles (None: the launcher's heuristic)."""
    saved = os.environ.pop("MEXMA_ATTN_TILES", None)
    if tiles:
        os.environ["MEXMA_ATTN_TILES"] = tiles
    try:
        yield
    finally:
        os.environ.pop("MEXMA_ATTN_TILES", None)
        if saved is not None:
            os.environ["MEXMA_ATTN_TILES"] = saved


def bench_config(dist, lens, n_heads, head_dim, dtype, device, opts, on_row=lambda row: None):
    """All methods on one packed batch; opts: smoke, skip_reference, tiles. Returns table rows, each also handed to
    on_row as soon as it is measured (the CSV then holds every finished row of a run stopped midway)."""
    q, k, v, do, cu = _packed_inputs(lens, n_heads, head_dim, dtype, device)
    check_agreement(q, k, v, cu, lens)
    flops_fwd = 4 * sum(L * L for L in lens) * n_heads * head_dim
    methods = [("block_diag_attention (triton)", *method_ours(q, k, v, cu, lens), do, None)]
    methods += [(f"block_diag_attention (tiles {t})", *method_ours(q, k, v, cu, lens), do, t) for t in opts.tiles]
    skip_varlen = varlen_available(q)
    if skip_varlen is None:
        methods.append(("varlen_attn (FlashAttention)", *method_varlen(q, k, v, cu, lens), do, None))
    elif skip_varlen not in opts.notes:
        opts.notes.append(skip_varlen)
    if not opts.smoke:
        methods.append(("flex_attention + document mask", *method_flex(q, k, v, cu, lens), None, None))
    best = _best_sdpa(q, k, v, cu, lens, opts.smoke)
    if best is not None:
        methods.append((f"padded SDPA ({best[1]})", best[2], best[3], None, None))
    if not opts.skip_reference:
        methods.append(("reference (PyTorch loop)", *method_reference(q, k, v, cu, lens), do, None))
    rows = []
    for name, fn, inputs, do_like, tiles in methods:
        with tiles_env(tiles):
            ms_fwd, ms_bwd, ms_both, mib = measure(fn, inputs, do_like, opts.smoke)
        rows.append({
            "lengths": dist, "tokens": sum(lens), "seqs": len(lens), "mean_len": round(sum(lens) / len(lens), 1),
            "H x D": f"{n_heads}x{head_dim}", "dtype": str(dtype).removeprefix("torch."), "method": name,
            "fwd_ms": ms_fwd, "bwd_ms": ms_bwd, "fwd+bwd_ms": ms_both,
            "fwd_TFLOPs": flops_fwd / ms_fwd / 1e9, "fwd+bwd_TFLOPs": 3.5 * flops_fwd / ms_both / 1e9,
            "peak_MiB": mib,
        })  # fmt: skip
        on_row(rows[-1])
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python kernels/bench/bench_block_diag_attention.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default="data/prepared", help="prepared dataset dir for the real length mix (if present)")
    p.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384, 32768, 65536], help="tokens per batch")
    p.add_argument("--heads", nargs="+", type=_heads, default=[(16, 64), (8, 128)], help="N_HEADSxHEAD_DIM")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--skip-reference", action="store_true", help="leave out the PyTorch loop reference")
    tiles_help = "extra kernel rows under MEXMA_ATTN_TILES=MxNxW (e.g. 64x32x4), to tune tiles"
    p.add_argument("--tiles", nargs="*", default=[], metavar="MxNxW", help=tiles_help)
    p.add_argument("--csv", help="also write the rows to this CSV file")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run (needs TRITON_INTERPRET=1); not a measurement")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        exit_without_cuda(__file__, f"TRITON_INTERPRET=1 {COMMAND} --smoke")
    args.notes = []
    rng = np.random.default_rng(args.seed)
    pools = {"lognormal(mean 40, max 200)": lognormal_lengths(rng)}
    if Path(args.data, "train").is_dir():
        pools[f"prepared ({args.data})"] = prepared_lengths(args.data)
    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", getattr(torch, args.dtype))
    tokens = [256] if args.smoke else args.tokens
    heads = [(2, 16)] if args.smoke else args.heads
    env = environment()
    print_header("block_diag_attention", env, COMMAND + (" --smoke" if args.smoke else ""))
    if args.smoke:
        print(NOT_A_FIGURE + "\n")
    rows = []

    def on_row(row):
        rows.append(row)
        if args.csv:
            write_csv(args.csv, rows, env, quiet=True)

    for dist, pool in pools.items():
        for n_tokens in tokens:
            lens = pack(pool, n_tokens, rng)
            for n_heads, head_dim in heads:
                bench_config(dist, lens, n_heads, head_dim, dtype, device, args, on_row)
    print_table(rows, list(rows[0]))
    for note in args.notes:
        print(f"note: {note}")
    print_speedups(rows)
    if args.csv:
        write_csv(args.csv, rows, env)
    return rows


def print_speedups(rows):
    """Baseline fwd+bwd ms / kernel fwd+bwd ms per batch; goals: >= 1.3x Flex, >= 2x padded SDPA."""
    ours = {_batch_key(r): r["fwd+bwd_ms"] for r in rows if r["method"] == "block_diag_attention (triton)"}
    print("\nfwd+bwd speed-up of block_diag_attention (baseline ms / kernel ms):")
    for row in rows:
        if not row["method"].startswith("block_diag_attention"):
            print(f"- {_batch_key(row)}: x{row['fwd+bwd_ms'] / ours[_batch_key(row)]:.2f} vs {row['method']}")


def _batch_key(row):
    return f"{row['lengths']} {row['tokens']} tokens {row['H x D']}"


def _heads(text):
    """argparse type for N_HEADSxHEAD_DIM."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--heads {text!r}: expected N_HEADSxHEAD_DIM such as 16x64")
    return int(parts[0]), int(parts[1])


if __name__ == "__main__":
    main()
