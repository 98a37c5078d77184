"""Sampler at scale: per-rank memory above the shared lengths file, start-up time and time per batch.

    python -m pipeline.bench_sampler --pairs 1e6 1e7 1e8 1e9 [--dir /tmp/bench_sampler] [--world 8] [--batches 200]

Synthetic data only: for each N, DIR/N/ gets the files data_prep/lengths.py writes (uint16 lengths (N, 2) drawn
from 5..120 tokens, 200 language pairs with Zipf-distributed row counts, rows grouped by pair), reused when present
(4 + 2 + 4 bytes per pair on disk: 10 GB at 10^9). Each (N, mode) runs in a fresh process as rank 0 of --world ranks
with gradient accumulation 2, the files opened with np.load(mmap_mode="r") as training does:

Sizes above --virtual-above (default 1e8) use arrays computed on access instead of files (no 10 GB on disk): that
measures the sampler itself; the shared files add 10 bytes per pair of page cache per node, not per rank.

- rss_anon_MiB: anonymous resident memory added by opening the files, building the sampler and drawing the batches
  (VmRSS minus the file-backed pages, which the page cache shares between the ranks of a node);
- startup_s: construction + the first batch; us_per_batch: mean over the next --batches micro batches.

Modes: fixed 150 pairs per micro batch; token budget 12000 with bucketing over 100 batches; fixed with
--lang-alpha 0.3 over the 200 pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_PAIRS = 200
MODES = ("fixed", "tokens", "alpha0.3")
CHUNK = 1 << 24  # rows written per chunk: 16M x 4 bytes of lengths = 64 MiB in memory while generating


def _rss_anon_mib() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) / 1024


class Virtual:
    """An (n,) or (n, 2) read-only array computed on access (index -> value), for sizes whose files would not fit
    the bench machine's disk or time: it measures the sampler alone (the shared file's pages are not counted)."""

    def __init__(self, n: int, kind: str, bounds: np.ndarray | None = None):
        self.n, self.kind, self.bounds = n, kind, bounds
        self.shape = (n, 2) if kind == "lengths" else (n,)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        if self.kind == "index":  # rows grouped by pair already
            return rows
        if self.kind == "codes":
            return np.searchsorted(self.bounds, rows, side="right").astype(np.uint16)
        h = (rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
        return np.stack([5 + h % 116, 5 + (h >> np.uint64(8)) % 116], axis=1).astype(np.uint16)


def zipf_counts(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, N_PAIRS + 1)  # Zipf: the largest pair has 200x the rows of the smallest
    counts = np.maximum(1, np.floor(weights / weights.sum() * n)).astype(np.int64)
    counts[0] += n - counts.sum()
    return counts


def make_files(root: Path, n: int) -> Path:
    """DIR/n/: lengths.npy (n, 2) uint16, pair_ids.npy, pair_index.npy, pairs.json; kept for the next run."""
    out = root / str(n)
    if (out / "pairs.json").is_file() and _cached_ok(out, n):
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.json").unlink(missing_ok=True)  # written last: present only over whole arrays
    counts = zipf_counts(n)
    lengths = np.lib.format.open_memmap(out / "lengths.npy", "w+", np.uint16, (n, 2))
    codes = np.lib.format.open_memmap(out / "pair_ids.npy", "w+", np.uint16, (n,))
    index = np.lib.format.open_memmap(out / "pair_index.npy", "w+", np.uint32 if n < 2**32 else np.uint64, (n,))
    bounds = np.cumsum(counts)
    rng = np.random.default_rng(0)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        lengths[start:stop] = rng.integers(5, 121, size=(stop - start, 2), dtype=np.uint16)
        codes[start:stop] = np.searchsorted(bounds, np.arange(start, stop), side="right")
        index[start:stop] = np.arange(start, stop)  # rows are grouped by pair already
    for a in (lengths, codes, index):
        a.flush()
    (out / "pairs.json").write_text(json.dumps({"names": [f"p{i}" for i in range(N_PAIRS)], "counts": counts.tolist()}))
    return out


def _cached_ok(out: Path, n: int) -> bool:
    """Files of an earlier run that are whole: each array's header shape and its file size (a truncated or damaged
    file is written again)."""
    try:
        for name, shape in (("lengths.npy", (n, 2)), ("pair_ids.npy", (n,)), ("pair_index.npy", (n,))):
            array = np.load(out / name, mmap_mode="r")
            if array.shape != shape:
                return False
        json.loads((out / "pairs.json").read_text())["counts"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _open(directory: str) -> tuple:
    """(lengths, PairTable): the files memory-mapped, or virtual arrays for `virtual:N`."""
    from pipeline.data.sampler import PairTable

    if directory.startswith("virtual:"):
        n = int(directory.split(":")[1])
        counts = zipf_counts(n)
        names = [f"p{i}" for i in range(N_PAIRS)]
        codes = Virtual(n, "codes", np.cumsum(counts))
        return Virtual(n, "lengths"), PairTable(names, counts, Virtual(n, "index"), codes)
    d = Path(directory)
    meta = json.loads((d / "pairs.json").read_text())
    index, codes = np.load(d / "pair_index.npy", mmap_mode="r"), np.load(d / "pair_ids.npy", mmap_mode="r")
    return np.load(d / "lengths.npy", mmap_mode="r"), PairTable(meta["names"], np.asarray(meta["counts"]), index, codes)


def run_child(directory: str, mode: str, world: int, batches: int) -> dict:
    from pipeline.data.sampler import DistributedBatchSampler, pair_probabilities

    base = _rss_anon_mib()
    t0 = time.perf_counter()
    lengths, pairs = _open(directory)
    size = dict(batch_tokens=12000, bucket_batches=100) if mode == "tokens" else dict(batch_pairs=150)
    probs = pair_probabilities(pairs.counts, 0.3) if mode == "alpha0.3" else None
    sampler = DistributedBatchSampler(
        lengths, **size, max_length=200, seed=0, rank=0, world_size=world, grad_accum=2, pairs=pairs, probs=probs
    )
    sampler.next_batch()
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = sum(len(sampler.next_batch()) for _ in range(batches))
    per_batch = (time.perf_counter() - t1) / batches
    return {
        "pairs": len(lengths),
        "mode": mode + (" (virtual)" if directory.startswith("virtual:") else ""),
        "rss_anon_MiB": round(_rss_anon_mib() - base, 1),
        "startup_s": round(startup, 3),
        "us_per_batch": round(per_batch * 1e6, 1),
        "rows_per_batch": round(rows / batches, 1),
    }


MAX_PAIRS = 1e12  # the virtual arrays index with int64; the files would need 10 TB


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Every flag in range before anything runs (argparse's error: usage, the flag, exit 2)."""
    if a.world < 1:
        p.error(f"--world must be >= 1, got {a.world}")
    if a.batches < 1:
        p.error(f"--batches must be >= 1 (micro batches timed), got {a.batches}")
    need = 150 * 2 * a.world  # one optimizer step of the fixed mode: 150 pairs x accumulation 2 x world
    for n in a.pairs:
        if not (math.isfinite(n) and need <= n <= MAX_PAIRS):
            p.error(
                f"--pairs {n:g}: every size must be a number from {need} (one step of {a.world} ranks) to {MAX_PAIRS:g}"
            )
    if Path(a.dir).exists() and not Path(a.dir).is_dir():
        p.error(f"--dir {a.dir}: not a directory")


def _child_result(proc: subprocess.CompletedProcess, directory: str, mode: str) -> dict:
    """The child's JSON line, or SystemExit naming its error (its last stderr line), not a CalledProcessError."""
    lines = proc.stdout.splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    error = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    raise SystemExit(f"bench_sampler: {directory} ({mode}) failed: {error}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench_sampler", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", nargs="+", type=float, default=[1e6, 1e7, 1e8], help="corpus sizes (1e9 = 10 GB)")
    p.add_argument("--dir", default="/tmp/bench_sampler", help="where the synthetic files are written and kept")
    p.add_argument("--world", type=int, default=8, help="ranks (the bench is rank 0 of them)")
    p.add_argument("--batches", type=int, default=200, help="micro batches timed after the first")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument(
        "--virtual-above",
        type=float,
        default=1e8,
        help="sizes above this use arrays computed on access instead of files (no disk; the sampler alone)",
    )
    p.add_argument("--child", nargs=2, metavar=("DIR", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(run_child(a.child[0], a.child[1], a.world, a.batches)))
        return 0
    _check_args(p, a)
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy "
        f"{np.__version__}; rank 0 of {a.world}, gradient accumulation 2; `{' '.join(sys.argv)}`"
    )
    print("| pairs | mode | per-rank RSS above the shared files (MiB) | start-up (s) | us / batch | rows / batch |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for n in (int(x) for x in a.pairs):
        t0 = time.perf_counter()
        directory = f"virtual:{n}" if n > a.virtual_above else str(make_files(Path(a.dir), n))
        made = time.perf_counter() - t0
        for mode in a.modes:
            cmd = [sys.executable, "-m", "pipeline.bench_sampler", "--child", directory, mode]
            cmd += ["--world", str(a.world), "--batches", str(a.batches)]
            r = _child_result(subprocess.run(cmd, capture_output=True, text=True), directory, mode)
            print(
                f"| {n:.0e} | {r['mode']} | {r['rss_anon_MiB']} | {r['startup_s']} | {r['us_per_batch']} | "
                f"{r['rows_per_batch']} |",
                flush=True,
            )
        if made > 1:
            print(f"# synthetic files for {n:.0e} pairs written in {made:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
