"""Benchmark the fused KoLeo loss against the DINOv2-style reference, forward + backward.

B from 1k to 64k rows at D = 1024, fp32 and bf16 inputs, under torch's fp32 matmul precision "highest"
(IEEE fp32 dots in both: the default) and "high" (TF32 dots in both). Each row: ms forward, backward and
both (triton.testing.do_bench) and peak extra memory of forward + backward.

FLOP and byte model: the search is a B x B x D GEMM, 2 * B^2 * D FLOPs, the only superlinear term
(reported as search TFLOP/s on the forward). The reference also writes and reads the B x B fp32 matrix
(4 * B^2 bytes: 16 GiB at B = 64k); the fused kernel keeps O(B * D) state (normalised rows, fp32).

Run: PYTHONPATH=. python kernels/bench/bench_koleo.py [--batch 1024 4096 16384 65536] [--csv out.csv]
Without CUDA it prints a message and exits 0; `--smoke` (with TRITON_INTERPRET=1) runs a tiny CPU
shape through every code path, which is not a performance figure.
"""

import argparse

import torch

from kernels import koleo_loss, koleo_loss_ref
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

COMMAND = "PYTHONPATH=. python kernels/bench/bench_koleo.py"


def check_agreement(x):
    """Guard the benchmark against timing a wrong kernel: fused vs reference loss on this batch."""
    fused, ref = koleo_loss(x).item(), koleo_loss_ref(x).item()
    if not abs(fused - ref) <= 1e-3 * max(1.0, abs(ref)):
        raise SystemExit(f"koleo_loss disagrees with the reference: {fused} vs {ref}")


def measure(fn, x, smoke):
    """ms forward, backward, forward+backward and peak extra MiB of forward+backward for fn(x) -> scalar."""
    x = x.detach().requires_grad_()
    loss = fn(x)
    ms_fwd = time_ms(lambda: fn(x), smoke)
    ms_bwd = time_ms(lambda: loss.backward(retain_graph=True), smoke, grad_to_none=[x])
    ms_both = time_ms(lambda: fn(x).backward(), smoke, grad_to_none=[x])
    loss, x.grad = None, None
    return ms_fwd, ms_bwd, ms_both, peak_extra_mib(lambda: fn(x).backward())


def bench_row(B, D, dtype, precision, device, smoke):
    torch.set_float32_matmul_precision(precision)
    x = torch.randn(B, D, device=device, dtype=dtype)
    check_agreement(x)
    rows = []
    for name, fn in (("koleo_loss (fused triton)", koleo_loss), ("reference (DINOv2-style)", koleo_loss_ref)):
        ms_fwd, ms_bwd, ms_both, mib = measure(fn, x, smoke)
        rows.append({
            "B": B, "D": D, "dtype": str(dtype).removeprefix("torch."), "fp32 matmul": precision, "method": name,
            "fwd_ms": ms_fwd, "bwd_ms": ms_bwd, "fwd+bwd_ms": ms_both,
            "search_TFLOPs": 2 * B * B * D / ms_fwd / 1e9, "peak_MiB": mib,
        })  # fmt: skip
    fused, ref = rows
    ratio = lambda key: ref[key] / fused[key] if fused[key] else float("nan")  # reference / fused: > 1 is a win
    rows.append({**fused, "method": "ratio reference / fused", "fwd_ms": ratio("fwd_ms"), "bwd_ms": ratio("bwd_ms"),
                 "fwd+bwd_ms": ratio("fwd+bwd_ms"), "search_TFLOPs": "", "peak_MiB": ratio("peak_MiB")})  # fmt: skip
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python kernels/bench/bench_koleo.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1024, 4096, 16384, 65536], help="rows B")
    p.add_argument("--dim", type=int, default=1024, help="row width D")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--precisions", nargs="+", default=["highest", "high"], choices=["highest", "high"],
                   help="torch.set_float32_matmul_precision for both fused and reference")  # fmt: skip
    p.add_argument("--csv", help="also write the rows to this CSV file")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run (needs TRITON_INTERPRET=1); not a measurement")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        exit_without_cuda(__file__, f"TRITON_INTERPRET=1 {COMMAND} --smoke")
    device = "cpu" if args.smoke else "cuda"
    batches, dim = ([64, 130], 32) if args.smoke else (args.batch, args.dim)
    dtypes = ["float32"] if args.smoke else args.dtypes
    precisions = ["highest"] if args.smoke else args.precisions
    env = environment()
    print_header("koleo_loss", env, COMMAND + (" --smoke" if args.smoke else ""))
    if args.smoke:
        print(NOT_A_FIGURE + "\n")
    rows = []
    saved = torch.get_float32_matmul_precision()
    try:
        for precision in precisions:
            for dtype in dtypes:
                for B in batches:
                    rows += bench_row(B, dim, getattr(torch, dtype), precision, device, args.smoke)
    finally:
        torch.set_float32_matmul_precision(saved)
    print_table(rows, list(rows[0]))
    if args.csv:
        write_csv(args.csv, rows, env)
    return rows


if __name__ == "__main__":
    main()
