"""`make gpu-check`: prove the GPU path on one GPU in one call of at most 8 minutes, the most valuable figure first.

Stages, in the order of their value (each with its own time limit; a failed or timed-out stage is recorded with
what it measured and the next one still runs; `summary.json` is rewritten after every stage):
1. train: one-GPU DeepSpeed ZeRO-2 bf16 `base` (ds_configs/zero2_bf16.json, 32 pairs x 2 micro batches, 30 steps;
   data/prepared when present, else synthetic pairs): time to first step, steps/s, tokens/s, host syncs per step
   measured against the expected grad accumulation + 2, a finite and falling loss; then `python -m pipeline.export`
   and `python -m eval` on the GPU;
2. bench-step: `pipeline.bench_step --preset large --pairs 100 --dtype bf16`: the training configuration (packed-ds,
   the DeepSpeed ZeRO-2 bf16 engine: its MFU is the training's) vs the padded original (AMP). 100 pairs, not the
   reference's 150: the padded variant keeps two fp32 log-softmax outputs of (pairs x 64) x 250002 plus padded
   activations of 4 x pairs x 64 tokens through 24 layers; at 150 pairs that is about 86 GB at its peak (with the
   weights and AdamW state), over an 80 GB card; at 100 pairs about 61 GB;
3. bench-kernels: block_diag_attention against varlen_attn, Flex (document mask, compiled once per head shape)
   and padded SDPA at 32k tokens, 16 x 64 and 8 x 128 heads; KoLeo at B = 16k and 64k;
4. kernels: the kernel test files of tests/kernels on CUDA (fp16 and bf16), with the time that is left.
Default limits (seconds): train 180, bench-step 130, bench-kernels 80, kernels 70, and --budget 470 for all stages
together, so one call ends in under 8 minutes whatever hangs (x4 on --dry-run). Writes OUT/summary.json and, in
real mode, dated rows in kernels/BENCHMARKS.md.

Offline nodes: `python3 scripts/gpu_check.py --wheelhouse DIR` installs DIR's wheels (`make wheelhouse`) into a
temporary directory placed first on sys.path and on the PYTHONPATH of every stage, and runs on the node's own
torch, triton and transformers; no Makefile, venv or network needed (docs/training.md, "Offline GPU nodes").

--dry-run runs every stage on CPU with the Triton interpreter and tiny shapes (a CI check that the script still
runs; no figure it prints is a measurement, and BENCHMARKS.md is left alone). Without CUDA the real mode exits 2.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a bare GPU node runs this file on its own python, the project not installed

from scripts.gpu_figures import (  # noqa: E402
    StageError,
    attention_speedups,
    benchmark_rows,
    koleo_ratios,
    loss_figures,
    pytest_counts,
    read_csv,
    speed_figures,
    step_figures,
)

NEEDED = ("torch", "triton", "transformers", "deepspeed", "datasets", "tokenizers", "pydantic", "safetensors")
ORDER = ("train", "bench-step", "bench-kernels", "kernels")
LIMITS = {"train": 180, "bench-step": 130, "bench-kernels": 80, "kernels": 70}  # seconds, see the docstring
BUDGET = 470.0  # seconds for all stages: 8 minutes less pre-flight (imports, the wheelhouse install)
DRY_RUN_SLACK = 4  # --dry-run: the limits and the budget x4 (a CI machine under load, first-use JIT builds)
TRAIN_GAS = 2  # micro batches per step in the train stage: expected syncs per step = TRAIN_GAS + 2
WHEELS: list[str] = []  # the --wheelhouse target, first on every stage's PYTHONPATH


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes (< 1 minute)")
    p.add_argument("--out", default="runs/gpu-check", help="output directory (summary.json, logs, the run)")
    p.add_argument("--wheelhouse", default=None, help="folder of wheels (make wheelhouse) installed to a temp dir")
    p.add_argument("--data", default="data/prepared", help="prepared dataset for the train stage (synthetic if absent)")
    p.add_argument("--testset", default="data/testset", help="FLORES-layout test set for eval (synthetic if absent)")
    p.add_argument("--steps", type=int, default=30, help="training steps of the train stage")
    p.add_argument("--stages", default=",".join(ORDER), help="comma list, run in this order")
    p.add_argument("--budget", type=float, default=None, help="seconds for all stages together (default 470; x4 on "
                   "--dry-run, where a loaded CI machine runs the stages, with their limits x4 too)")  # fmt: skip
    p.add_argument("--limits", default="", help="per-stage seconds, e.g. train=240,kernels=120")
    p.add_argument("--no-benchmarks-md", action="store_true", help="do not append rows to kernels/BENCHMARKS.md")
    return p.parse_args(argv)


def env(dry_run: bool) -> dict:
    # MEXMA_SYNC_DEBUG: the training stage counts host syncs per optimizer step on CUDA (syncs_per_step)
    e = dict(os.environ, TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled", MEXMA_SYNC_DEBUG="1")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *WHEELS])
    if dry_run:
        e.update(TRITON_INTERPRET="1", DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    else:
        for key in ("TRITON_INTERPRET", "DS_ACCELERATOR", "MEXMA_KERNELS"):
            e.pop(key, None)  # the real thing: Triton compiled for the GPU, DeepSpeed's CUDA accelerator
        e.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # token counts vary per batch
    return e


class Clock:
    """The stage's deadline: min(its limit, what is left of --budget)."""

    def __init__(self, limit: float):
        self.deadline = time.time() + limit

    def left(self) -> float:
        return self.deadline - time.time()


def run(cmd: list[str], log: Path, args, clock: Clock, cap: float | None = None) -> str:
    """Run one command (its own process group), output to log; on a non-zero exit or the deadline, kill the group
    and raise StageError with the command and the log's tail."""
    timeout = max(1.0, min(clock.left(), cap) if cap is not None else clock.left())
    started = time.time()
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(args.dry_run), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = f"killed at its time limit ({timeout:.0f} s)"
    text = log.read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise StageError(f"`{shlex.join(cmd)}` exited {rc} after {time.time() - started:.0f} s (log {log}):\n{tail}")
    return text


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group (spawned benchmark workers included), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def py(*parts: str) -> list[str]:
    return [sys.executable, *parts]


# -- stages: each fills `result` as it goes, so a stage that fails still reports what it measured -------------------
def stage_train(args, out: Path, clock: Clock, result: dict) -> None:
    data, testset = _train_inputs(args, out)
    run_dir, export_dir = out / "train", out / "export"
    if args.dry_run:
        from tests.pipeline.conftest import TINY_MODEL_FLAGS

        model = [*TINY_MODEL_FLAGS, "--ds-config", "ds_configs/zero2_cpu_fp32.json", "--batch-pairs", "8"]
    else:
        model = ["--model", "base", "--ds-config", "ds_configs/zero2_bf16.json", "--batch-pairs", "32"]
    n_steps, gas = (min(args.steps, 8), 1) if args.dry_run else (args.steps, TRAIN_GAS)
    steps = ["--max-steps", str(n_steps), "--save-every", str(n_steps), "--valid-every", "-1"]
    cmd = py("pipeline/train.py", "--data", str(data), "--output-dir", str(run_dir), *model, *steps,
             "--grad-accum", str(gas), "--log-every", "5", "--wandb", "off", "--no-resume")  # fmt: skip
    launched = time.time()
    try:  # export + eval keep 60 s (or 40% of a short limit)
        run(cmd, out / "train.log", args, clock, cap=max(0.6 * clock.left(), clock.left() - 60))
    finally:
        result.update(speed_figures(run_dir / "metrics.jsonl", launched, gas))
        result["backends"] = _resolved_backends(run_dir / "config.json")
    result.update(loss_figures(run_dir / "metrics.jsonl"))
    run(py("-m", "pipeline.export", str(run_dir), str(export_dir)), out / "export.log", args, clock)
    device = "cpu" if args.dry_run else "cuda"
    run(py("-m", "eval", "--model", str(export_dir), "--flores", str(testset), "--split", "devtest", "--langs", "all",
           "--out", str(out / "eval"), "--device", device, "--no-progress"), out / "eval.log", args, clock)  # fmt: skip
    results = out / "eval" / "results.json"
    result["eval"] = json.loads(results.read_text()) if results.exists() else None


def _resolved_backends(config: Path) -> dict | None:
    """The attention / KoLeo backends the run chose at start-up (config.json "resolved"), with the reason."""
    try:
        backends = json.loads(config.read_text())["resolved"]["backends"] or {}
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    chosen = {k: v for k, v in backends.items() if isinstance(v, dict) and "backend" in v}
    return {k: f"{v['backend']} ({v.get('reason', '')})" for k, v in chosen.items()}


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
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def stage_bench_step(args, out: Path, clock: Clock, result: dict) -> None:
    path = out / "bench_step.json"
    path.unlink(missing_ok=True)
    if args.dry_run:
        flags = ["--preset", "tiny", "--pairs", "3", "--vocab", "200", "--warmup", "0", "--steps", "1", "--rounds",
                 "1", "--batches", "1", "--threads", "1", "--variants", "packed-ds", "--shapes", "default"]  # fmt: skip
    else:  # 100 pairs: the padded variant at 150 would not fit 80 GB (module docstring)
        flags = ["--preset", "large", "--pairs", "100", "--dtype", "bf16", "--shapes", "default", "--rounds", "1",
                 "--variants", "packed-ds,padded"]  # fmt: skip
    run(py("-m", "pipeline.bench_step", *flags, "--json", str(path)), out / "bench_step.log", args, clock)
    data = json.loads(path.read_text())
    shapes = data if "variants" not in data else {"default": data}
    result.update({name: step_figures(s) for name, s in shapes.items()})


def stage_bench_kernels(args, out: Path, clock: Clock, result: dict) -> None:
    attn_csv, koleo_csv = out / "bench_attention.csv", out / "bench_koleo.csv"
    for path in (attn_csv, koleo_csv):
        path.unlink(missing_ok=True)
    if args.dry_run:
        attn, koleo = ["--smoke", "--data", "/nonexistent"], ["--smoke"]
    else:
        attn = ["--tokens", "32768", "--heads", "16x64", "8x128", "--skip-reference", "--data", args.data]
        koleo = ["--batch", "16384", "65536", "--dtypes", "bfloat16", "--precisions", "highest"]
    try:
        run(py("kernels/bench/bench_block_diag_attention.py", *attn, "--csv", str(attn_csv)), out / "bench_attn.log",
            args, clock, cap=max(0.6 * clock.left(), clock.left() - 25))  # fmt: skip
    finally:  # the benchmark writes each row as it is measured
        result["attention"] = attention_speedups(read_csv(attn_csv))
    try:
        run(py("kernels/bench/bench_koleo.py", *koleo, "--csv", str(koleo_csv)), out / "bench_koleo.log", args, clock)
    finally:
        result["koleo"] = koleo_ratios(read_csv(koleo_csv))


def stage_kernels(args, out: Path, clock: Clock, result: dict) -> None:
    tests = ["tests/kernels/test_block_diag_attention.py", "tests/kernels/test_koleo.py"]
    if args.dry_run:  # the interpreter runs the whole suite in minutes: one test of each kernel here
        tests = ["tests/kernels/test_block_diag_attention.py::test_custom_softmax_scale",
                 "tests/kernels/test_koleo.py::test_deterministic"]  # fmt: skip
    log = out / "kernels.log"
    try:
        run(py("-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "not faults", *tests), log, args, clock)
    finally:
        result.update(pytest_counts(log.read_text(errors="replace") if log.exists() else ""))


STAGES = {"train": stage_train, "bench-step": stage_bench_step, "bench-kernels": stage_bench_kernels,
          "kernels": stage_kernels}  # fmt: skip


# -- wheelhouse, environment, main -----------------------------------------------------------------------------------
def install_wheelhouse(folder: str) -> Path:
    """DIR/*.whl into a temporary directory (pip --no-index --no-deps; unzipped when this Python has no pip), made
    first on sys.path here and on PYTHONPATH for every stage; removed at exit."""
    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        raise StageError(f"--wheelhouse {folder}: no *.whl files there (build them with `make wheelhouse`)")
    target = Path(tempfile.mkdtemp(prefix="gpu-check-wheels-"))
    atexit.register(shutil.rmtree, target, True)
    cmd = py("-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--disable-pip-version-check",
             "--target", str(target), *map(str, wheels))  # fmt: skip
    if importlib.util.find_spec("pip") is None or subprocess.run(cmd, capture_output=True).returncode != 0:
        for wheel in wheels:  # a wheel is a zip of site-packages content (+ *.data/purelib|platlib)
            with zipfile.ZipFile(wheel) as z:
                z.extractall(target)
        for data in target.glob("*.data"):
            for lib in ("purelib", "platlib"):
                if (data / lib).is_dir():
                    shutil.copytree(data / lib, target, dirs_exist_ok=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    WHEELS.insert(0, str(target))
    return target


def preflight(args) -> dict:
    """Versions, device, git SHA; a clear failure for a missing CUDA or a missing package (what to carry)."""
    if args.wheelhouse:
        install_wheelhouse(args.wheelhouse)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise StageError("no CUDA device (torch.cuda.is_available() is False): run on a GPU machine, or --dry-run")
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise StageError(f"missing Python packages {missing}: run `make wheelhouse` on a machine with network, carry "
                         "the folder here, pass --wheelhouse DIR (docs/training.md, 'Offline GPU nodes')")  # fmt: skip
    import transformers
    import triton

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "device": torch.cuda.get_device_name() if not args.dry_run else "cpu (dry run, TRITON_INTERPRET=1)",
        "torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda or "-", "python": sys.version.split()[0], "wheelhouse": args.wheelhouse,
        "git": sha.strip() or "unknown", "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "scripts/gpu_check.py", *sys.argv[1:]]),
    }  # fmt: skip


def stage_limits(args) -> dict[str, float]:
    limits = {name: DRY_RUN_SLACK * s if args.dry_run else s for name, s in LIMITS.items()}
    for item in filter(None, (s.strip() for s in args.limits.split(","))):
        name, _, seconds = item.partition("=")
        if name not in STAGES or not seconds.replace(".", "", 1).isdigit():
            raise StageError(f"--limits: {item!r}: expected STAGE=SECONDS with STAGE in {list(STAGES)}")
        limits[name] = float(seconds)
    return limits


def run_stage(name: str, args, out: Path, limit: float) -> dict:
    print(f"gpu-check: stage {name} (limit {limit:.0f} s) ...", flush=True)
    t0, result = time.time(), {}
    try:
        STAGES[name](args, out, Clock(limit), result)
        stage = {"status": "ok", "result": result}
    except Exception as e:  # a broken stage never stops the next one
        stage = {"status": "failed", "result": result, "error": f"{type(e).__name__}: {e}"}
    stage["seconds"] = round(time.time() - t0, 1)
    print(f"gpu-check: stage {name} {stage['status']} in {stage['seconds']:.0f} s", flush=True)
    return stage


def main(argv=None) -> int:
    args = parse_args(argv)
    out = ROOT / args.out
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        print(f"gpu-check: --stages: unknown {unknown}; choose from {list(STAGES)}", file=sys.stderr)
        return 2
    try:
        limits = stage_limits(args)
        out.mkdir(parents=True, exist_ok=True)
        summary = {"dry_run": args.dry_run, "ok": False, "env": preflight(args), "stages": {}}
    except StageError as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    budget_end = time.time() + (args.budget or (DRY_RUN_SLACK * BUDGET if args.dry_run else BUDGET))
    for name in names:
        summary["stages"][name] = run_stage(name, args, out, max(1.0, min(limits[name], budget_end - time.time())))
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    failed = [n for n, s in summary["stages"].items() if s["status"] != "ok"]
    summary["ok"] = not failed
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if not args.dry_run and not args.no_benchmarks_md:
        with open(ROOT / "kernels" / "BENCHMARKS.md", "a") as f:
            f.write(benchmark_rows(summary))
    for n in failed:
        print(f"gpu-check: stage {n} FAILED: {summary['stages'][n]['error']}", file=sys.stderr)
    print(f"gpu-check: {len(names) - len(failed)}/{len(names)} stages passed; summary in {out / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
