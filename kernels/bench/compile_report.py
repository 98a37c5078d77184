"""Compile every kernel for NVIDIA targets without a GPU and report registers, spills and shared memory.

The interpreter checks numerics but never runs Triton's GPU compiler. This compiles each @triton.jit kernel
to a cubin (Triton's bundled ptxas) with the tile sizes and launch options the launchers would pick, for
sm_80 (A100) and sm_90 (H100) and each dtype, then reads `cuobjdump --dump-resource-usage`: REG (registers
per thread), LOCAL (bytes spilled per thread; 0 = no spills) and the shared memory the launch needs
(static + Triton's dynamic), checked against the architecture's per-block limit. A kernel that fails to
compile or needs more shared memory than the SM has would fail at launch on that GPU; spills only cost speed.

Run (TRITON_INTERPRET must be unset): PYTHONPATH=. python kernels/bench/compile_report.py [--arch 80 90] [--quick]
Exit status 1 when a kernel does not compile or does not fit.
"""

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

bda = importlib.import_module("kernels.block_diag_attention")  # the package re-exports the function's name
kol = importlib.import_module("kernels.koleo")

# Max shared memory per block (opt-in), bytes: CUDA C Programming Guide, "Technical Specifications" table.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
TRITON_TYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
FP32_POINTERS = {"LSE", "DELTA", "XN", "NORM", "DIST", "COEF"}
INT_POINTERS = {"CU_SEQLENS", "BLOCK_SEQ", "BLOCK_START", "NN", "IN_ORDER", "IN_START"}
FLOAT_SCALARS = {"qk_scale", "sm_scale", "eps"}
INT_SCALARS = {"B", "D"}  # capitals that are sizes, not pointers


def signature(fn, dtype, constexprs):
    """Triton signature for fn: data pointers in dtype, bookkeeping pointers fp32/i32, scalars i32/fp32."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in FP32_POINTERS:
            sig[name] = "*fp32"
        elif name in INT_POINTERS:
            sig[name] = "*i32"
        elif (name.isupper() or name == "Out") and name not in INT_SCALARS:
            sig[name] = "*" + TRITON_TYPE[dtype]
        else:
            sig[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    return sig


def attention_specs(dtypes, head_dims):
    """(label, kernel, dtype, constexprs, options) for the forward and the three backward kernels."""
    for dtype in dtypes:
        for head_dim in head_dims:
            for mean_len in (40, 120):  # the two tile regimes of _launch_config
                bm, bn, bd, options = bda._launch_config(mean_len * 100, 100, head_dim, dtype)
                precision = bda._dot_precision(dtype)
                meta = dict(HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, DOT_PRECISION=precision)
                label = f"{TRITON_TYPE[dtype]} D={head_dim} tiles {bm}x{bn}"
                for kernel in (bda._attn_fwd_kernel, bda._attn_bwd_dkdv_kernel, bda._attn_bwd_dq_kernel):
                    yield label, kernel, dtype, meta, options
                delta_meta = dict(HEAD_DIM=head_dim, BLOCK_M=64, BLOCK_D=bd)
                yield f"{TRITON_TYPE[dtype]} D={head_dim}", bda._attn_bwd_delta_kernel, dtype, delta_meta, {}


def koleo_specs(dtypes, dim):
    bm, bn, bk = kol._search_config(dim)
    for precision in ("tf32x3", "tf32"):
        meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_PRECISION=precision)
        yield f"fp32 D={dim} {precision}", kol._koleo_nn_kernel, torch.float32, meta, {}
    block_d = dict(BLOCK_D=triton.next_power_of_2(dim))
    yield f"fp32 D={dim}", kol._koleo_dist_kernel, torch.float32, block_d, {}
    for dtype in dtypes:
        yield f"{TRITON_TYPE[dtype]} D={dim}", kol._koleo_normalize_kernel, dtype, block_d, {}
        yield f"{TRITON_TYPE[dtype]} D={dim}", kol._koleo_bwd_kernel, dtype, block_d, {}


def resource_usage(cubin):
    """REG, LOCAL and static SHARED of the cubin's one function, from cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        cmd = [tool, "--dump-resource-usage", f.name]
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {key: int(re.search(rf"\b{key}:(\d+)", text).group(1)) for key in ("REG", "LOCAL", "SHARED")}


def compile_one(kernel, dtype, constexprs, options, arch):
    src = ASTSource(kernel, signature(kernel, dtype, constexprs), constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    usage = resource_usage(compiled.asm["cubin"])
    usage["shared_total"] = usage["SHARED"] + compiled.metadata.shared
    return usage


def run(archs, quick):
    dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float16, torch.float32]
    specs = [*attention_specs(dtypes + ([torch.float32] if quick else []), [128] if quick else [64, 128]),
             *koleo_specs([torch.float32] if quick else [torch.float32, torch.bfloat16], 1024)]  # fmt: skip
    specs = list({(kernel.__name__, label): (label, kernel, *rest) for label, kernel, *rest in specs}.values())
    rows, failures = [], []
    for arch in archs:
        for label, kernel, dtype, meta, options in specs:
            name = f"sm_{arch} {kernel.__name__} [{label}]"
            try:
                usage = compile_one(kernel, dtype, meta, options, arch)
            except Exception as err:  # any compiler error is a failure to report, not to hide
                failures.append(f"{name}: does not compile: {type(err).__name__}: {' '.join(str(err).split())[:400]}")
                continue
            fits = usage["shared_total"] <= SHARED_LIMIT[arch]
            if not fits:
                failures.append(f"{name}: needs {usage['shared_total']} B shared > {SHARED_LIMIT[arch]} B")
            rows.append((name, usage["REG"], usage["LOCAL"], usage["shared_total"], "ok" if fits else "TOO BIG"))
    return rows, failures


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python kernels/bench/compile_report.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT))
    p.add_argument("--quick", action="store_true", help="bf16 and fp32 at D=128 and the KoLeo kernels only")
    args = p.parse_args(argv)
    if bda._INTERPRET:
        sys.exit("compile_report: TRITON_INTERPRET=1 turns the kernels into interpreter functions; unset it")
    rows, failures = run(args.arch, args.quick)
    print(f"triton {triton.__version__}\n")
    print("| kernel | registers | spilled bytes | shared bytes | fits |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
