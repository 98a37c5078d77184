"""`python -m data_prep.bench --pairs 1e6 1e7 --workers 1 2`: per-stage throughput of the preparation, its scaling with
workers, peak memory per worker and scratch space, and what that means at a billion pairs.

For each corpus size N (synthetic NLLB-like text, data_prep/synth.py: 24 language pairs of Zipf sizes, lognormal
lengths, 50k-line TSV files) and each worker count W, one `python -m data_prep --source 'tsv:DIR/part-*.tsv'
--tokenizer TOK --workers W --force` runs in a child process while the bench samples every process of its tree
every 0.2 s (RSS). The tokenizer is a 12k-id Unigram trained once on the corpus (not timed), so the `vocab` stage
is its copy; `--train-tokenizer V` times training on the pair-balanced sample instead.

Printed per stage: wall seconds, pairs per second per worker (N / seconds / W), the speed-up from the fewest to
the most workers; per run: peak RSS of the largest process (a worker or the driver) and scratch bytes per pair.
The projection to `--project-pairs` on `--project-workers` cores divides N by each parallel stage's per-worker
rate times the cores, and scales the one-task stages from their measured times (count: linear in the read tasks;
vocab: fixed; merge: a fixed part plus a part per pair, fitted on the two largest sizes); it assumes a shared file
system that delivers the read and write bandwidth of the local disk to every core (see docs/data_prep.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .plan import TASK_BYTES_MAX

PARALLEL = ("read", "dedup", "encode")  # stages with one task per input group / key partition
SERIAL = ("count", "vocab", "merge")  # one task each


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_prep(
    corpus: Path, tok: Path, out: Path, workers: int, train: int | None, extra: tuple[str, ...] = ()
) -> tuple[float, float, dict]:
    """(wall s, peak RSS of the largest process in MiB, manifest) of one preparation in a child process."""
    cmd = [sys.executable, "-m", "data_prep", "--source", f"tsv:{corpus}/part-*.tsv", "--out", str(out),
           "--workers", str(workers), "--force", "-q"]  # fmt: skip
    cmd += ["--train-tokenizer", str(train)] if train else ["--tokenizer", str(tok)]
    cmd += list(extra)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    peak, start = 0, time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    while child.poll() is None:
        peak = max([peak, *(_rss_kib(p) for p in _tree(child.pid))])
        time.sleep(0.2)
    wall = time.perf_counter() - start
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, cmd)
    return wall, peak / 1024, json.loads((out / "manifest.json").read_text())


def prepare_inputs(work: Path, sizes: list[int], tokenizer: str | None) -> Path:
    from .synth import write_corpus
    from .tokenizer import train_unigram

    for n in sizes:
        folder = work / f"corpus-{n}"
        if not (folder / "DONE").exists():
            write_corpus(folder, n)
            (folder / "DONE").write_text("")
    if tokenizer:
        return Path(tokenizer)
    tok = work / "tokenizer"
    if not (tok / "tokenizer.json").exists():
        from .readers import tsv_records

        first = sorted((work / f"corpus-{min(sizes)}").glob("part-*.tsv"))[0]
        texts = (t for i, r in enumerate(tsv_records(first, ("", ""))) if i < 50_000 and hasattr(r, "src")
                 for t in (r.src, r.trg))  # fmt: skip
        train_unigram(texts, 12000, tok)
    return tok


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def report(results: dict, sizes: list[int], workers: list[int]) -> None:
    print("| pairs | workers | stage | seconds | pairs/s per worker | speed-up |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for n in sizes:
        base = results[(n, workers[0])]["manifest"]["seconds"]
        for w in workers:
            sec = results[(n, w)]["manifest"]["seconds"]
            for stage in (*PARALLEL[:1], "count", "dedup", "vocab", "encode", "merge"):
                rate = n / max(sec[stage], 1e-9) / w
                print(f"| {n:,} | {w} | {stage} | {sec[stage]:.1f} | {rate:,.0f} | {base[stage] / sec[stage]:.2f}x |")
            r = results[(n, w)]
            print(f"| {n:,} | {w} | all (wall) | {r['wall']:.1f} | {n / r['wall'] / w:,.0f} | "
                  f"{results[(n, workers[0])]['wall'] / r['wall']:.2f}x |")  # fmt: skip
    print()
    print("| pairs | workers | peak RSS, largest process | scratch bytes per pair | read tasks | partitions |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for (n, w), r in results.items():
        m = r["manifest"]
        print(f"| {n:,} | {w} | {r['rss']:.0f} MiB | {m['scratch_bytes'] / n:.0f} | {m['read_tasks']} | "
              f"{m['partitions']} |")  # fmt: skip


def project(results: dict, sizes: list[int], workers: list[int], target: float, cores: int) -> None:
    """Time at `target` pairs on `cores` workers, from the runs at the largest size n.

    Parallel stages: each stage's best measured per-worker rate at n (on a shared machine, the run whose workers got
    the most CPU). One-task stages: `vocab` is the tokenizer (copied: fixed); `count` reads one stats file per read
    task (scaled by their number); `merge` is a fixed part plus a part linear in pairs (the sampling arrays, the
    skipped lines), fitted on the two largest sizes when two were measured, else scaled linearly from n (an upper
    bound: at 1e6 pairs its time is mostly fixed costs)."""
    n = max(sizes)
    runs = [results[(n, w)] for w in workers]
    fastest = {size: min((results[(size, w)] for w in workers), key=lambda r: r["manifest"]["seconds"]["merge"])
               for size in sizes}  # fmt: skip
    total = 0.0
    print(f"\nprojection: {target:.0e} pairs on {cores} cores, from the rates at {n:,} pairs")
    print("| stage | per-worker rate (pairs/s) | projected seconds |")
    print("| --- | ---: | ---: |")
    for stage in ("read", "count", "dedup", "vocab", "encode", "merge"):
        if stage in PARALLEL:
            rate = max(n / r["manifest"]["seconds"][stage] / w for r, w in zip(runs, workers))
            t = target / (rate * cores)
            print(f"| {stage} | {rate:,.0f} | {t:.0f} |")
        else:
            r = min(runs, key=lambda r: r["manifest"]["seconds"][stage])
            m = r["manifest"]
            input_bytes = sum(e["size"] or 0 for e in m["inputs"]) * target / n
            tasks_then = max(input_bytes / TASK_BYTES_MAX, 1)  # count reads one file per read task
            if stage == "merge" and len(sizes) > 1:
                small, big = sorted(sizes)[-2:]
                t_small, t_big = (fastest[size]["manifest"]["seconds"]["merge"] for size in (small, big))
                per_pair = max(t_big - t_small, 0.0) / (big - small)
                fixed = max(t_big - per_pair * big, 0.0)
                t = fixed + per_pair * target
                print(f"| merge (one task: {fixed:.1f} s + {per_pair * 1e9:.1f} ns a pair, "
                      f"fitted on {small:,} and {big:,}) | - | {t:.0f} |")  # fmt: skip
            else:
                scale = {"count": max(tasks_then / m["read_tasks"], 1.0), "vocab": 1.0}
                t = m["seconds"][stage] * scale.get(stage, target / n)
                print(f"| {stage} (one task) | - | {t:.0f} |")
        total += t
    print(f"| all | | {total:.0f} ({total / 60:.1f} min) |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--pairs", type=float, nargs="+", default=[1e6], help="corpus sizes")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    p.add_argument("--tokenizer", help="tokenizer dir (default: a 12k Unigram trained once on the corpus)")
    p.add_argument("--train-tokenizer", type=int, help="time training a tokenizer of this many ids instead")
    p.add_argument("--keep", help="keep corpora and outputs in this dir (reused) instead of a temporary one")
    p.add_argument("--task-mb", type=float, help="passed to data_prep (input MB per read task)")
    p.add_argument("--project-pairs", type=float, default=1e9)
    p.add_argument("--project-workers", type=int, default=16 * 64, help="cores of the projection (16 x 64)")
    args = p.parse_args(argv)
    sizes, workers = [int(x) for x in args.pairs], sorted(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        tok = prepare_inputs(work, sizes, args.tokenizer)
        print(f"data_prep bench | {platform.machine()} x{os.cpu_count()} cores | git {git_sha()} | "
              f"load average {os.getloadavg()[0]:.1f} at start", flush=True)  # fmt: skip
        results = {}
        for n in sizes:
            for w in workers:
                out = work / f"out-{n}-{w}"
                extra = ("--task-mb", str(args.task_mb)) if args.task_mb else ()
                wall, rss, manifest = run_prep(work / f"corpus-{n}", tok, out, w, args.train_tokenizer, extra)
                results[(n, w)] = {"wall": wall, "rss": rss, "manifest": manifest}
                print(f"pairs {n:,} workers {w}: {wall:.1f} s, read {manifest['counts']['read']:,}", flush=True)
        report(results, sizes, workers)
        project(results, sizes, workers, args.project_pairs, args.project_workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
