"""The figures `scripts/gpu_check.py` reads back from what its stages wrote: training metrics, benchmark CSV/JSON,
pytest output; and the dated rows it appends to kernels/BENCHMARKS.md. Every reader accepts a partial file (a stage
killed at its time limit still reports what it measured)."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path


class StageError(RuntimeError):
    """A stage failed; the message says which command, its status and the log's tail."""


# -- train ---------------------------------------------------------------------------------------------------------
def loss_figures(metrics: Path) -> dict:
    """Finite and falling loss: the mean of the last 5 train steps below the mean of the first 5."""
    train = _train_records(metrics)
    losses = [r["loss"] for r in train]
    if not losses or not all(isinstance(x, int | float) and math.isfinite(x) for x in losses):
        raise StageError(f"training losses not finite (or none logged) in {metrics}: {losses}")
    k = max(1, min(5, len(losses) // 2))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    if not last < first:
        raise StageError(f"training loss did not fall: mean of the first {k} steps {first:.4f}, last {k} {last:.4f}")
    return {"steps": len(losses), "loss_first": first, "loss_last": last}


def _train_records(metrics: Path) -> list[dict]:
    if not metrics.is_file():
        return []
    records = []
    for line in metrics.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
    return [r for r in records if r.get("split") == "train"]


def speed_figures(metrics: Path, launched: float, grad_accum: int, warm: int = 3) -> dict:
    """Time to first step (launch to the first step's record), steps/s and tokens/s after `warm` steps, and the
    host syncs per step measured against the expected count.

    Expected syncs with ZeRO-2 and overlap_comm: one at the end of every micro step's backward (DeepSpeed waits
    for the reduction stream before the next micro batch reuses its buckets) plus about two at the optimizer step
    (the overflow flag read, the gradient-norm check): grad_accum + 2."""
    train = _train_records(metrics)
    out: dict = {"time_to_first_step_s": round(train[0]["time"] - launched, 1) if train else None}
    later = [r for r in train if r["step"] > warm]
    if len(later) >= 2:
        span = later[-1]["time"] - later[0]["time"]
        out["steps_per_s"] = round((len(later) - 1) / span, 2) if span > 0 else None
        out["tokens_per_s"] = round(statistics.median(r["tokens_per_s"] for r in later))
    syncs = [r["syncs_per_step"] for r in train if "syncs_per_step" in r]
    out["syncs_per_step"] = {"measured": statistics.median(syncs) if syncs else "not measured",
                             "max": max(syncs) if syncs else None, "expected": grad_accum + 2}  # fmt: skip
    return out


# -- benchmarks ----------------------------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
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


def step_figures(summary: dict) -> dict:
    """Our step (the training configuration, packed-ds, when measured; else packed) vs the padded original:
    tokens/s ratio (target >= 3x), peak-memory ratio (<= 0.5), useful-FLOP MFU (>= 40%), each variant named."""
    v = summary["variants"]
    ours = "packed-ds" if "packed-ds" in v else "packed"
    packed, padded = v.get(ours, {}), v.get("padded")
    figures = {"variant": ours, "label": packed.get("label")}
    figures.update({k: packed.get(k) for k in ("tokens_per_s", "peak_mib", "mfu", "ms")})
    figures["backends"] = {k: r.get("backend") for k, r in (packed.get("backends") or {}).items()}
    if "packed" in v and ours != "packed":
        figures["packed_amp"] = {k: v["packed"].get(k) for k in ("tokens_per_s", "peak_mib", "mfu", "ms")}
    if padded:
        figures["padded_label"] = padded.get("label")
        figures["speedup_vs_padded"] = packed["tokens_per_s"] / padded["tokens_per_s"]
        figures["memory_vs_padded"] = packed["peak_mib"] / padded["peak_mib"]
    return figures


def pytest_counts(text: str) -> dict:
    """passed / failed / skipped / error counts of a `pytest -v` log, complete or cut off; the failing test ids."""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    failed = []
    for m in re.finditer(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", text, re.MULTILINE):
        counts[m.group(2).lower()] += 1
        if m.group(2) in ("FAILED", "ERROR"):
            failed.append(m.group(1))
    return {**counts, "failed_tests": failed[:20]}


# -- kernels/BENCHMARKS.md -----------------------------------------------------------------------------------------
def benchmark_rows(summary: dict) -> str:
    """Dated markdown rows for kernels/BENCHMARKS.md: one per stage with its headline figures."""
    e = summary["env"]
    stamp = f"| {e['date']} | {e['device']} | torch {e['torch']}, triton {e['triton']}, CUDA {e['cuda']} | {e['git']} "
    header = "| date | device | versions | git | stage | status | figures |\n|---|---|---|---|---|---|---|"
    lines = ["", f"### gpu-check {e['date']}", "", f"command: `{e['command']}`", "", header]
    for name, stage in summary["stages"].items():
        shown = {**stage.get("result", {}), **({"error": stage["error"][:300]} if "error" in stage else {})}
        figures = json.dumps(shown, separators=(",", ":"))
        figures = figures.replace("|", "/")[:1500]
        lines.append(f"{stamp}| {name} | {stage['status']} ({stage['seconds']:.0f} s) | `{figures}` |")
    return "\n".join(lines) + "\n"
