"""Shared benchmark plumbing: environment stamp, timing, peak memory, tables.

Every row carries the device, versions and git SHA so a pasted table stays attributable.
"""

import csv
import datetime
import subprocess
import sys
from pathlib import Path

import torch
import triton

NOT_A_FIGURE = "CPU interpreter smoke run: checks that the benchmark runs; NOT a performance figure."


def environment():
    """Device, versions, git SHA and UTC date for every table row."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "kernels"], cwd=root, capture_output=True, text=True)
        sha += "+dirty" if dirty.stdout.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (TRITON_INTERPRET)"
    return {
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda or "-",
        "git": sha,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }


def exit_without_cuda(script, smoke_hint):
    """The benchmark measures GPU kernels; on a CPU-only machine say so and exit 0 (make bench keeps going)."""
    print(f"{script}: no CUDA device, nothing measured. Run it on a GPU machine, or `{smoke_hint}` "
          "for a CPU smoke run (not a performance figure).")  # fmt: skip
    sys.exit(0)


def time_ms(fn, smoke=False, grad_to_none=None):
    """Mean milliseconds of fn(); triton.testing.do_bench on CUDA (L2 flushed between runs, the .grad of
    grad_to_none reset so backward timings hold no accumulation), one untimed call in smoke mode."""
    if smoke:
        fn()
        return float("nan")
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none)


def peak_extra_mib(fn):
    """Peak CUDA memory allocated during fn() above what was allocated before it, in MiB (nan on CPU)."""
    if not torch.cuda.is_available():
        fn()
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def print_table(rows, columns):
    """Markdown table of dict rows; floats with 3 significant digits."""

    def fmt(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")


def write_csv(path, rows, env, quiet=False):
    """Rows with the environment columns appended (device, versions, git SHA, date)."""
    if not rows:
        return
    fields = list(rows[0]) + list(env)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **env})
    if not quiet:
        print(f"wrote {path}")


def print_header(title, env, command):
    print(f"## {title}\n")
    print(" · ".join(f"{k}: {v}" for k, v in env.items()))
    print(f"command: `{command}`\n")
