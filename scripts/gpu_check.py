"""`make gpu-check`: prove the GPU path on one GPU in minutes (issue #10 part 5), stopping at the first failure.

Stages, in order:
1. kernels: `pytest tests/kernels` on CUDA (the tests take CUDA when present; fp16 and bf16);
2. bench-kernels: block_diag_attention against varlen_attn, Flex (document mask) and padded SDPA at 16k-64k tokens,
   16 x 64 and 8 x 128 heads (prepared-data lengths when data/prepared exists, and the lognormal); KoLeo at
   B = 16k and 64k;
3. bench-step: `pipeline.bench_step --preset large --dtype bf16 --pairs 150 --shapes both`, packed vs padded;
4. train: one-GPU DeepSpeed ZeRO-2 bf16 run of `base` for 30 steps (data/prepared, else synthetic pairs):
   finite, falling loss and syncs per step (the `syncs_per_step` field of metrics.jsonl train records when the
   trainer writes one, else "not measured"); then `python -m pipeline.export` and `python -m eval` on the GPU.
Writes runs/gpu-check/summary.json (after every stage) and, in real mode, dated rows in kernels/BENCHMARKS.md.

--dry-run runs every stage on CPU with the Triton interpreter and tiny shapes (a CI check that the script still
runs; no figure it prints is a measurement, and BENCHMARKS.md is left alone). Without CUDA the real mode exits 2.

The GPU image of this workplace has no DeepSpeed, datasets, faiss or pydantic: carry them as wheels
(`pip download --no-deps --only-binary=:all: --python-version 3.12 ... deepspeed==0.19.8 hjson pydantic
pydantic-core annotated-types typing-inspection datasets dill multiprocess xxhash faiss-cpu polib`, see
/work/.library/device/README.md) and install them before running; the pre-flight stage lists what is missing.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NEEDED = ("torch", "triton", "transformers", "deepspeed", "datasets", "faiss", "tokenizers", "pydantic")


class StageError(RuntimeError):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes (< 1 minute)")
    p.add_argument("--out", default="runs/gpu-check", help="output directory (summary.json, logs, the run)")
    p.add_argument("--data", default="data/prepared", help="prepared dataset for stage 4 (synthetic if absent)")
    p.add_argument("--testset", default="data/testset", help="FLORES-layout test set for eval (synthetic if absent)")
    p.add_argument("--steps", type=int, default=30, help="training steps of stage 4")
    p.add_argument("--stages", default="kernels,bench-kernels,bench-step,train", help="comma list, in order")
    p.add_argument("--no-benchmarks-md", action="store_true", help="do not append rows to kernels/BENCHMARKS.md")
    return p.parse_args(argv)


def env(dry_run: bool) -> dict:
    # MEXMA_SYNC_DEBUG: the training stage counts host syncs per optimizer step on CUDA (syncs_per_step)
    e = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    e["MEXMA_SYNC_DEBUG"] = "1"
    if dry_run:
        e.update(TRITON_INTERPRET="1", DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    else:
        for key in ("TRITON_INTERPRET", "DS_ACCELERATOR", "MEXMA_KERNELS"):
            e.pop(key, None)  # the real thing: Triton compiled for the GPU, DeepSpeed's CUDA accelerator
    return e


def run(cmd: list[str], log: Path, args, timeout: int) -> str:
    """Run one command, its output to log; raise StageError with the command and the log's tail."""
    started = time.time()
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env(args.dry_run), stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout)  # fmt: skip
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout} s"
    text = log.read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise StageError(f"`{shlex.join(cmd)}` exited {rc} after {time.time() - started:.0f} s (log {log}):\n{tail}")
    return text


def py(*parts: str) -> list[str]:
    return [sys.executable, *parts]


# -- stages ------------------------------------------------------------------------------------------------------
def stage_kernels(args, out: Path) -> dict:
    tests = ["tests/kernels"]
    if args.dry_run:  # the interpreter runs the whole suite in minutes: one test of each kernel here
        tests = ["tests/kernels/test_block_diag_attention.py::test_custom_softmax_scale",
                 "tests/kernels/test_koleo.py::test_deterministic"]  # fmt: skip
    text = run(py("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not faults", *tests), out / "kernels.log",
               args, 600)  # fmt: skip
    return {"pytest": text.strip().splitlines()[-1]}


def stage_bench_kernels(args, out: Path) -> dict:
    attn_csv, koleo_csv = out / "bench_attention.csv", out / "bench_koleo.csv"
    if args.dry_run:
        attn = ["--smoke", "--data", "/nonexistent"]
        koleo = ["--smoke"]
    else:
        attn = ["--tokens", "16384", "32768", "65536", "--heads", "16x64", "8x128", "--skip-reference",
                "--data", args.data]  # fmt: skip
        koleo = ["--batch", "16384", "65536", "--dtypes", "bfloat16", "--precisions", "highest"]
    run(py("kernels/bench/bench_block_diag_attention.py", *attn, "--csv", str(attn_csv)), out / "bench_attn.log",
        args, 300)  # fmt: skip
    run(py("kernels/bench/bench_koleo.py", *koleo, "--csv", str(koleo_csv)), out / "bench_koleo.log", args, 180)
    return {"attention": attention_speedups(_read_csv(attn_csv)), "koleo": koleo_ratios(_read_csv(koleo_csv))}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def attention_speedups(rows: list[dict]) -> list[dict]:
    """Per batch: fwd+bwd ms of each method and baseline ms / kernel ms (targets: >= 1.0 varlen, 1.3 Flex, 2 SDPA)."""
    batches = {}
    for r in rows:
        key = (r["lengths"], r["tokens"], r["H x D"])
        batches.setdefault(key, {})[r["method"]] = {"fwd+bwd_ms": float(r["fwd+bwd_ms"]),
                                                    "peak_MiB": float(r["peak_MiB"])}  # fmt: skip
    out = []
    for (lengths, tokens, heads), methods in batches.items():
        ours = methods.get("block_diag_attention (triton)", {}).get("fwd+bwd_ms", math.nan)
        speedup = {m: round(v["fwd+bwd_ms"] / ours, 3) for m, v in methods.items() if not m.startswith("block_diag")}
        out.append({"lengths": lengths, "tokens": int(tokens), "heads": heads, "methods": methods, "speedup": speedup})
    return out


def koleo_ratios(rows: list[dict]) -> list[dict]:
    return [{"B": int(r["B"]), "dtype": r["dtype"], "ref_over_fused_fwd+bwd": float(r["fwd+bwd_ms"])}
            for r in rows if r["method"].startswith("ratio")]  # fmt: skip


def stage_bench_step(args, out: Path) -> dict:
    path = out / "bench_step.json"
    if args.dry_run:
        flags = ["--preset", "tiny", "--pairs", "3", "--vocab", "200", "--warmup", "0", "--steps", "1", "--rounds",
                 "1", "--batches", "1", "--threads", "1", "--variants", "packed", "--shapes", "default"]  # fmt: skip
    else:
        flags = ["--preset", "large", "--pairs", "150", "--dtype", "bf16", "--shapes", "both", "--rounds", "1"]
    run(py("-m", "pipeline.bench_step", *flags, "--json", str(path)), out / "bench_step.log", args, 600)
    data = json.loads(path.read_text())
    shapes = data if "variants" not in data else {"default": data}
    return {name: step_figures(s) for name, s in shapes.items()}


def step_figures(summary: dict) -> dict:
    """Packed vs padded: tokens/s ratio (target >= 3x), peak-memory ratio (<= 0.5), useful-FLOP MFU (>= 40%)."""
    v = summary["variants"]
    packed, padded = v.get("packed", {}), v.get("padded")
    figures = {k: packed.get(k) for k in ("tokens_per_s", "peak_mib", "mfu", "ms")}
    figures["backends"] = {k: r.get("backend") for k, r in (packed.get("backends") or {}).items()}
    if padded:
        figures["speedup_vs_padded"] = packed["tokens_per_s"] / padded["tokens_per_s"]
        figures["memory_vs_padded"] = packed["peak_mib"] / padded["peak_mib"]
    return figures


def stage_train(args, out: Path) -> dict:
    data, testset = _train_inputs(args, out)
    run_dir, export_dir = out / "train", out / "export"
    if args.dry_run:
        from tests.pipeline.conftest import TINY_MODEL_FLAGS

        model = [*TINY_MODEL_FLAGS, "--ds-config", "ds_configs/zero2_cpu_fp32.json", "--batch-pairs", "8"]
    else:
        model = ["--model", "base", "--ds-config", "ds_configs/zero2_bf16.json", "--batch-pairs", "64"]
    n_steps = min(args.steps, 8) if args.dry_run else args.steps
    steps = ["--max-steps", str(n_steps), "--save-every", str(n_steps), "--valid-every", "0"]
    cmd = py("pipeline/train.py", "--data", str(data), "--output-dir", str(run_dir), *model, *steps,
             "--grad-accum", "1", "--log-every", "1", "--wandb", "off", "--no-resume")  # fmt: skip
    run(cmd, out / "train.log", args, 540)
    result = loss_figures(run_dir / "metrics.jsonl")
    run(py("-m", "pipeline.export", str(run_dir), str(export_dir)), out / "export.log", args, 300)
    device = "cpu" if args.dry_run else "cuda"
    run(py("-m", "eval", "--model", str(export_dir), "--flores", str(testset), "--split", "devtest", "--langs", "all",
           "--out", str(out / "eval"), "--device", device, "--no-progress"), out / "eval.log", args, 300)  # fmt: skip
    results = out / "eval" / "results.json"
    result["eval"] = json.loads(results.read_text()) if results.exists() else None
    return result


def _train_inputs(args, out: Path) -> tuple[Path, Path]:
    """data/prepared and data/testset when they exist; else a synthetic pair set and FLORES layout built here."""
    data, testset = ROOT / args.data, ROOT / args.testset
    if args.dry_run or not (data / "manifest.json").exists():
        from tests.pipeline.conftest import make_prepared

        data = make_prepared(_fresh(out / "synthetic_prepared"), n_train=64 * max(args.steps, 8), n_valid=16)
    if args.dry_run or not testset.is_dir():
        from tests.eval.conftest import write_flores

        testset = write_flores(_fresh(out / "synthetic_flores"))
    return data, testset


def _fresh(path: Path) -> Path:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def loss_figures(metrics: Path) -> dict:
    """Finite and falling loss (mean of the last 5 train steps below the first 5), syncs per step if recorded."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("split") == "train"]
    losses = [r["loss"] for r in train]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise StageError(f"training losses not finite (or none logged) in {metrics}: {losses}")
    k = max(1, min(5, len(losses) // 2))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    if not last < first:
        raise StageError(f"training loss did not fall: mean of the first {k} steps {first:.4f}, last {k} {last:.4f}")
    syncs = [r["syncs_per_step"] for r in train if "syncs_per_step" in r]
    return {"steps": len(losses), "loss_first": first, "loss_last": last,
            "syncs_per_step": max(syncs) if syncs else "not measured"}  # fmt: skip


STAGES = {"kernels": stage_kernels, "bench-kernels": stage_bench_kernels, "bench-step": stage_bench_step,
          "train": stage_train}  # fmt: skip


# -- environment, summary, BENCHMARKS.md ---------------------------------------------------------------------------
def preflight(args) -> dict:
    """Versions, device, git SHA; a clear failure for a missing CUDA or a missing package (what to carry)."""
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise StageError("no CUDA device (torch.cuda.is_available() is False): run on a GPU machine, or --dry-run")
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise StageError(f"missing Python packages {missing}: install them (on the device machine, carry wheels; "
                          "see this script's docstring)")  # fmt: skip
    import triton

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "device": torch.cuda.get_device_name() if not args.dry_run else "cpu (dry run, TRITON_INTERPRET=1)",
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda or "-",
        "git": sha.strip() or "unknown", "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "scripts/gpu_check.py", *sys.argv[1:]]),
    }  # fmt: skip


def benchmark_rows(summary: dict) -> str:
    """Dated markdown rows for kernels/BENCHMARKS.md: one per stage with its headline figures."""
    e = summary["env"]
    stamp = f"| {e['date']} | {e['device']} | torch {e['torch']}, triton {e['triton']}, CUDA {e['cuda']} | {e['git']} "
    header = "| date | device | versions | git | stage | status | figures |\n|---|---|---|---|---|---|---|"
    lines = ["", f"### gpu-check {e['date']}", "", f"command: `{e['command']}`", "", header]
    for name, stage in summary["stages"].items():
        figures = json.dumps(stage.get("result", stage.get("error", "")), separators=(",", ":"))
        figures = figures.replace("|", "/")[:1500]
        lines.append(f"{stamp}| {name} | {stage['status']} ({stage['seconds']:.0f} s) | `{figures}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        print(f"gpu-check: --stages: unknown {unknown}; choose from {list(STAGES)}", file=sys.stderr)
        return 2
    summary = {"dry_run": args.dry_run, "ok": False, "stages": {}}
    try:
        summary["env"] = preflight(args)
    except StageError as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    failed = None
    for name in names:
        print(f"gpu-check: stage {name} ...", flush=True)
        t0 = time.time()
        try:
            result = STAGES[name](args, out)
            summary["stages"][name] = {"status": "ok", "seconds": time.time() - t0, "result": result}
        except StageError as e:
            summary["stages"][name] = {"status": "failed", "seconds": time.time() - t0, "error": str(e)}
            failed = f"gpu-check: stage {name} FAILED: {e}"
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        print(f"gpu-check: stage {name} {summary['stages'][name]['status']} in {time.time() - t0:.0f} s", flush=True)
        if failed:
            break
    summary["ok"] = failed is None
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if not args.dry_run and not args.no_benchmarks_md:
        with open(ROOT / "kernels" / "BENCHMARKS.md", "a") as f:
            f.write(benchmark_rows(summary))
    print(failed or f"gpu-check: all stages passed; summary in {out / 'summary.json'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
