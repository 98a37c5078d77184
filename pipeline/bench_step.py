"""Training-step benchmark: our packed MEXMA step against the plain padded reference, on the same batches.

A step is one micro batch's forward, backward, grad clipping at 1.2 and AdamW. Variants:
- packed-ds: the training configuration, `MexmaModel` inside the trainer's DeepSpeed engine (pipeline/bench_ds.py:
  ZeRO-2 bf16 weights with fp32 masters on GPUs, fp32 on CPUs); its MFU is the training's. Default on CUDA;
- packed: `MexmaModel` (one encoder call over the packed 4B views, block-diagonal attention, head in one call,
  chunked tied cross-entropy at masked positions only), torch AdamW, bf16 autocast over fp32 weights with
  --dtype bf16 (the original's AMP, so it compares with padded like for like);
- padded: `pipeline.model.reference.PaddedMexma` (four padded encoder calls, two padded head calls, full-vocabulary
  logits), i.e. the original's computation with stock SDPA attention;
- packed-ref: the packed model with attention through the per-sequence PyTorch reference (diagnostic).
Each variant runs in its own process (spawned, same seeds, same batches) so peak memory is its own; rounds
alternate the variants, and the CPU is shared, so the median over all measured steps is reported.

Units: real tokens = non-padding tokens of the four views (what both variants must encode); tokens/s = real
tokens / median step time. FLOP model (`step_flops`, useful work only, identical for both variants): per real
token per encoder layer 2 * (4 H^2 + 2 H F) + 4 H L_seq (QK^T, PV), the head the same over the masked views,
the projection 2 H V per masked token; x3 for forward + backward. CPU ms = process time per step, the
measure that survives a shared, loaded CPU. Peak memory: CUDA max_memory_allocated;
CPU peak RSS minus the RSS before the model was built (weights + AdamW state + activations).

Shapes (`--shapes`): "default" is this project's model (6-layer 8-head head, `--vocab`); "original" the shapes
the original MEXMA runs were compared at (vocabulary 8000, 2-layer 4-head head with FFN 3072);
"both" runs and reports the two. On CUDA, MFU = useful TFLOP/s / the device's dense bf16 peak (`--peak-tflops`,
default from the device name: H100/H200 989), and attention="auto" is resolved by `MexmaModel.select_backends`
(kernel checked and timed against varlen_attn) before the packed variant runs; the report is in the JSON.

    python -m pipeline.bench_step                       # tiny, 32 pairs of 8-64 tokens, CPU fp32
    python -m pipeline.bench_step --preset large --pairs 150 --dtype bf16 --shapes both   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from pipeline.bench_ds import ds_step
from pipeline.data.collate import MexmaCollator
from pipeline.model.mexma import ModelConfig, build_model, encoder_config
from pipeline.model.reference import PaddedMexma, unpack_to_padded

VARIANTS = ("packed-ds", "packed", "padded", "packed-ref")
LABELS = {
    "packed-ds": "training configuration: DeepSpeed ZeRO-2 engine (bf16 weights, fp32 masters on GPUs)",
    "packed": "packed, torch AdamW over fp32 weights (bf16 autocast with --dtype bf16: the original's AMP)",
    "padded": "padded reference (the original's computation), torch AdamW over fp32 weights (autocast as packed)",
    "packed-ref": "packed, attention through the per-sequence PyTorch reference (diagnostic)",
}
SHAPES = {  # name -> (vocabulary or None for --vocab, head overrides of ModelConfig)
    "default": (None, {}),
    "original": (8000, {"head_layers": 2, "head_heads": 4, "head_ffn": 3072}),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks (datasheets)


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        prog="python -m pipeline.bench_step", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="large" if cuda else "tiny", help="model preset (tiny, base, large)")
    p.add_argument("--pairs", type=int, default=150 if cuda else 32, help="translation pairs per batch")
    p.add_argument("--min-len", type=int, default=8, help="shortest sentence in tokens, with <s> and </s>")
    p.add_argument("--max-len", type=int, default=64, help="longest sentence in tokens, with <s> and </s>")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: 250002 large/base, 32000 tiny)")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="bf16" if cuda else "fp32",
        help="fp32, or bf16 autocast with fp32 master weights (the original's AMP) for both variants",
    )
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps per variant per round")
    p.add_argument("--steps", type=int, default=5, help="measured steps per variant per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over the variants")
    p.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    default_variants = "packed-ds,packed,padded" if cuda else "packed,padded"
    p.add_argument("--variants", default=default_variants, help=f"comma list of {VARIANTS}")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--shapes", choices=("default", "original", "both"), default="default", help="see the docstring")
    p.add_argument("--attention", default="auto", help="ModelConfig.attention of the packed variant")
    p.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak for MFU (default: by name)")
    args = p.parse_args(argv)
    args.head = {}
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; choose from {VARIANTS}")
    if not 2 <= args.min_len <= args.max_len:
        p.error(f"--min-len/--max-len: need 2 <= min <= max, got {args.min_len}, {args.max_len}")
    if args.vocab is None:
        args.vocab = 32000 if args.preset == "tiny" else 250002
    if args.dtype == "bf16" and not args.device.startswith("cuda"):
        p.error("--dtype bf16 is for GPUs; CPU runs fp32 (DESIGN: bf16 on GPUs, fp32 on CPUs)")
    return args


def make_batches(args) -> list[dict]:
    """Random pairs with uniform lengths in [min_len, max_len], masked by the training collator (seeded)."""
    gen = torch.Generator().manual_seed(1234)
    special = {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": args.vocab - 1}
    collate = MexmaCollator(special, args.vocab, seed=0)

    def sentence():
        n = int(torch.randint(args.min_len, args.max_len + 1, (1,), generator=gen)) - 2
        return [0, *torch.randint(4, args.vocab - 1, (n,), generator=gen).tolist(), 2]

    return [
        collate([{"src_ids": sentence(), "trg_ids": sentence()} for _ in range(args.pairs)])
        for _ in range(args.batches)
    ]


def step_flops(batch: dict, cfg: ModelConfig, vocab: int, padded: bool = False) -> float:
    """FLOPs of one training step (forward + backward = 3 x forward); see the module docstring.

    padded=False: the useful work (real tokens, masked rows only). padded=True: what the padded reference
    executes (every view padded to its side's longest sentence, logits at every head position).
    """
    enc = encoder_config(cfg, vocab)
    hidden, ffn = enc.hidden_size, enc.intermediate_size
    lens = (batch["cu_seqlens"][1:] - batch["cu_seqlens"][:-1]).double()  # (4B,)
    b = batch["n_pairs"]
    if padded:  # (4B,) -> each side's views at that side's max length; vocabulary at all 2B x L head positions
        side_max = torch.stack([lens[:b].max(), lens[b : 2 * b].max()])
        lens = side_max.repeat_interleave(b).repeat(2)  # order: src, trg, src, trg blocks of B

    def stack(layers, width, seq_lens):
        per_token = 2 * (4 * hidden**2 + 2 * hidden * width)
        return layers * float((seq_lens * per_token + 4 * hidden * seq_lens**2).sum())

    n_masked = float(lens[: 2 * b].sum()) if padded else int((batch["labels"] != -100).sum())
    forward = stack(enc.num_hidden_layers, ffn, lens) + stack(cfg.head_layers, cfg.head_ffn, lens[: 2 * b])
    return 3 * (forward + 2 * hidden * vocab * n_masked)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def model_config(args, variant: str = "packed") -> ModelConfig:
    attention = "ref" if variant == "packed-ref" else args.attention
    return ModelConfig(model=args.preset, attention=attention, **args.head).validate()


def shape_args(args, shape: str):
    """args for one --shapes entry: its vocabulary and head overrides."""
    vocab, head = SHAPES[shape]
    out = copy.copy(args)
    out.vocab, out.head, out.shape = vocab or args.vocab, dict(head), shape
    return out


def _build(variant: str, args, device):
    torch.manual_seed(0)
    cfg = model_config(args, variant)
    model = build_model(cfg, args.vocab)
    if variant == "padded":
        model = PaddedMexma.from_packed(model)
    return model.to(device).train(), cfg


def _to_device(batch: dict, variant: str, device) -> dict:
    if variant == "padded":
        batch = unpack_to_padded(batch)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def run_variant(variant: str, args, batches: list[dict]) -> dict:
    """Warm-up + measured steps of one variant in this process -> step times (s) and peak memory (bytes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return _measure(variant, args, batches)
    finally:
        torch.set_num_threads(threads)


def _measure(variant: str, args, batches: list[dict]) -> dict:
    device = torch.device(args.device)
    base_rss = _rss_bytes()
    model, _ = _build(variant, args, device)
    inputs = [_to_device(b, variant, device) for b in batches]
    backends = None
    if device.type == "cuda" and variant in ("packed", "packed-ds") and args.attention == "auto":
        lengths = (batches[0]["cu_seqlens"][1:] - batches[0]["cu_seqlens"][:-1]).tolist()
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        backends = model.select_backends(device, dtype, lengths)
    step = ds_step(model, args.dtype, args.pairs) if variant == "packed-ds" else _amp_step(model, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(args.warmup + args.steps):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step(inputs[i % len(inputs)])
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{variant}: non-finite loss {loss.item()} at step {i}")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    return {
        "times": times,
        "cpu_times": cpu_times,
        "peak_bytes": peak,
        "loss": float(loss.detach()),
        "backends": backends,
    }


def _amp_step(model, args, device):
    """step(batch) -> loss: zero_grad, forward under bf16 autocast (--dtype bf16) over fp32 weights, backward,
    clipping at 1.2, torch AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, foreach=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step(batch: dict):
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.2)
        opt.step()
        return loss

    return step


def _child(variant, args, queue):
    queue.put(run_variant(variant, args, make_batches(args)))


def run_isolated(variant: str, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(variant, args, queue))
    proc.start()
    proc.join()  # the result is a few hundred bytes: it fits the queue's pipe before join returns
    if proc.exitcode:
        raise RuntimeError(f"benchmark process for {variant} exited with {proc.exitcode} (traceback above)")
    return queue.get(timeout=10)


def environment(args) -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = "unknown"
    if args.device.startswith("cuda"):
        device = torch.cuda.get_device_name(torch.device(args.device))
    else:
        threads = args.threads or torch.get_num_threads()
        device = f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores), {threads} torch threads"
    return {
        "device": device,
        "torch": torch.__version__,
        "git": sha or "unknown",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def summarize(args, results: dict, batches: list[dict]) -> dict:
    real = statistics.mean(int(b["input_ids"].numel()) for b in batches)
    padded = statistics.mean(
        sum(v.numel() for k, v in unpack_to_padded(b).items() if k.endswith("input_ids")) * 2 for b in batches
    )  # masked + clean views share each side's padded shape
    flops = statistics.mean(step_flops(b, model_config(args), args.vocab) for b in batches)
    padded_flops = statistics.mean(step_flops(b, model_config(args), args.vocab, padded=True) for b in batches)
    peak = peak_tflops(args)
    rows = {}
    for variant, runs in results.items():
        times = [t for r in runs for t in r["times"]]
        median = statistics.median(times)
        cpu = statistics.median(t for r in runs for t in r["cpu_times"])
        rows[variant] = {
            "ms": 1000 * median,
            "tokens_per_s": real / median,
            "tflops": flops / median / 1e12,
            "cpu_ms": 1000 * cpu,
            "peak_mib": max(r["peak_bytes"] for r in runs) / 2**20,
            "loss": runs[-1]["loss"],
            "step_ms": [round(1000 * t, 1) for t in times],
            "mfu": flops / median / 1e12 / peak if peak else None,
            "backends": runs[-1].get("backends"),
            "label": LABELS[variant],
        }
    return {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "peak_tflops": peak,
        "env": environment(args),
        "real_tokens": real,
        "padded_tokens": padded,
        "step_flops": flops,
        "padded_step_flops": padded_flops,
        "variants": rows,
    }


def peak_tflops(args) -> float | None:
    """--peak-tflops, or the dense bf16 peak of a known CUDA device; None on CPU / unknown devices."""
    if args.peak_tflops or not args.device.startswith("cuda"):
        return args.peak_tflops
    name = torch.cuda.get_device_name(torch.device(args.device))
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def print_report(summary: dict) -> None:
    cfg, env, rows = summary["config"], summary["env"], summary["variants"]
    print(f"# shapes {cfg.get('shape', 'default')} | {env['device']} | torch {env['torch']} | git {env['git']} | "
          f"{env['date']}")  # fmt: skip
    print(
        f"# preset {cfg['preset']}, {cfg['pairs']} pairs of {cfg['min_len']}-{cfg['max_len']} tokens, "
        f"vocab {cfg['vocab']}, head {cfg.get('head') or 'default'}, {cfg['dtype']}; "
        f"real tokens/step {summary['real_tokens']:.0f}, padded-reference "
        f"tokens/step {summary['padded_tokens']:.0f}; GFLOP/step useful {summary['step_flops'] / 1e9:.0f}, "
        f"executed by the padded reference {summary['padded_step_flops'] / 1e9:.0f}; median of {cfg['rounds']} x "
        f"{cfg['steps']} steps after {cfg['warmup']} warm-up per round"
    )
    print(
        "| variant | ms/step | real tokens/s | useful TFLOP/s | CPU ms/step | peak MiB "
        "| tokens/s vs padded | CPU time vs padded | peak memory vs padded | MFU |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ref = rows.get("padded")
    for name, r in rows.items():
        speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        cpu = f"{r['cpu_ms'] / ref['cpu_ms']:.2f}x" if ref else "-"
        mem = f"{r['peak_mib'] / ref['peak_mib']:.2f}x" if ref else "-"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        print(
            f"| {name} | {r['ms']:.1f} | {r['tokens_per_s']:.0f} | {r['tflops']:.3f} | {r['cpu_ms']:.0f} "
            f"| {r['peak_mib']:.0f} | {speed} | {cpu} | {mem} | {mfu} |"
        )
    for name in rows:
        print(f"- {name}: {LABELS[name]}")


def run_shape(args) -> dict:
    results = {v: [] for v in args.variants}
    for round_idx in range(args.rounds):
        order = args.variants if round_idx % 2 == 0 else args.variants[::-1]
        for variant in order:
            results[variant].append(run_isolated(variant, args))
    summary = summarize(args, results, make_batches(args))
    print_report(summary)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    names = ("default", "original") if args.shapes == "both" else (args.shapes,)
    summaries = {name: run_shape(shape_args(args, name)) for name in names}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summaries if args.shapes == "both" else summaries[names[0]], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
