"""``python -m eval.mine --bench``: throughput of mining's k-NN search (exact and approximate) and of embedding.

Sides of n random unit vectors (d = 1024, fp16 memory-mapped files, as the mining cache stores them) for each n of
``--bench-sizes``:

- ``exact``: ``knn_exact`` (one blocked GEMM pass serving both directions) for the first ``--bench-queries``
  source rows against all n target rows. Its cost is linear in the queries, so sentences/s is queries / seconds, and
  a whole n x n run takes n / (sentences/s) (FLOP model: 2 n^2 d for the cosines, computed once for both
  directions).
- ``approximate``: ``build_index`` (train on ``--index-sample`` rows, add all n) and ``knn_index`` (k x ``--rerank``
  candidates, rescored exactly) for ``--bench-queries`` queries, one direction (mining needs two indexes and two
  searches). The factory is ``--index``, or ``IVF{nlist},PQ64`` with nlist the power of two nearest sqrt(n),
  trained on ``--index-sample`` rows (default 64 x nlist).
- ``recall``: on a synthetic set with planted translations (target i = source i + Gaussian noise of norm ~0.8,
  normalised, then random targets up to n), the share of the exact k-NN lists the approximate search finds
  (recall@k), and how often it ranks the planted translation first (the exact search's rate beside it).
- ``embed`` (with ``--model``): sentences/s of the encoder on synthetic sentences of 6-14 words.

Each row is printed as a JSON line with the device, versions and git SHA; a markdown table follows.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eval.knn import build_index, faiss_or_none, knn_exact, knn_index, x_blocks

DIM = 1024


def environment() -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    faiss = faiss_or_none()
    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "faiss": None if faiss is None else faiss.__version__,
        "git": sha,
    }


def unit_rows(path: Path, n: int, seed: int, planted: np.ndarray | None = None, noise: float = 0.0) -> np.memmap:
    """n random unit vectors as an fp16 memory-mapped file, written in blocks; with ``planted`` the first rows are
    ``planted + noise`` (normalised) instead."""
    out = np.memmap(path, mode="w+", dtype=np.float16, shape=(n, DIM))
    rng = np.random.default_rng(seed)
    for r0 in range(0, n, 65536):
        r1 = min(n, r0 + 65536)
        block = rng.standard_normal((r1 - r0, DIM), dtype=np.float32)
        if planted is not None and r0 < planted.shape[0]:
            m = min(r1, planted.shape[0]) - r0
            block[:m] = planted[r0 : r0 + m] + noise * block[:m] / math.sqrt(DIM)
        out[r0:r1] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()
    return out


def default_factory(n: int) -> tuple[str, int]:
    """``IVF{nlist},PQ64`` with nlist the power of two nearest sqrt(n), and its training sample: 64 x nlist rows
    (faiss asks for at least 39 per list; k-means on more costs proportionally more)."""
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    return f"IVF{nlist},PQ64", 64 * nlist


def bench_exact(x, y, queries: int, args) -> dict:
    start = time.perf_counter()
    knn_exact(x[:queries], y, args.neighborhood, args.neighborhood, block=args.block, device=args.bench_device)
    seconds = time.perf_counter() - start
    rate = queries / seconds
    n = y.shape[0]
    return {"queries": queries, "seconds": round(seconds, 2), "sentences_per_s": round(rate, 1),
            "full_run_s": round(n / rate, 1), "gflops": round(2 * queries * n * DIM / seconds / 1e9, 1)}  # fmt: skip


def bench_approximate(x, y, queries: int, factory: str, sample: int, args) -> tuple[dict, object]:
    start = time.perf_counter()
    index = build_index(y, factory, sample=sample, nprobe=args.nprobe, block=args.block)
    built = time.perf_counter() - start
    start = time.perf_counter()
    knn_index(x, y, index, args.neighborhood, x_blocks(queries, args.block), rerank=args.rerank)
    seconds = time.perf_counter() - start
    row = {"factory": factory, "sample": min(sample, y.shape[0]), "nprobe": args.nprobe, "rerank": args.rerank}
    row["train_add_s"] = round(built, 1)
    row.update(queries=queries, search_s=round(seconds, 2), sentences_per_s=round(queries / seconds, 1))
    return row, index


def recall(x, y, index, queries: int, args) -> dict:
    """Approximate vs exact k-NN lists of the first ``queries`` rows; planted translations are rows i -> i."""
    k = args.neighborhood
    exact = knn_exact(x[:queries], y, k, 0, block=args.block, device=args.bench_device)
    _, approx, _ = knn_index(x, y, index, k, x_blocks(queries, args.block), rerank=args.rerank)
    found = np.mean([len(set(a) & set(e)) / k for a, e in zip(approx.tolist(), exact.fwd_ind.tolist())])
    rows = np.arange(queries)
    top1_exact, top1_approx = np.mean(exact.fwd_ind[:, 0] == rows), np.mean(approx[:, 0] == rows)
    return {"recall_at_k": round(float(found), 4), "planted_top1_exact": round(float(top1_exact), 4),
            "planted_top1_approx": round(float(top1_approx), 4)}  # fmt: skip


def bench_embed(args) -> dict:
    from eval.encode import export_if_needed, load_encoder

    rng = np.random.default_rng(0)
    words = "the a cat dog house river city green small large old new walks sees finds book tree car".split()
    sentences = [" ".join(rng.choice(words, rng.integers(6, 15))) for _ in range(args.bench_embed_sentences)]
    model = export_if_needed(args.model, Path(tempfile.mkdtemp()) / "exported_model", args.trust_checkpoint)
    device = args.bench_device
    encoder = load_encoder(model, args.pooling, device, args.dtype, args.batch_tokens, args.max_length, args.tokenizer)
    encoder.encode(sentences[:64])  # warm-up
    start = time.perf_counter()
    encoder.encode(sentences)
    seconds = time.perf_counter() - start
    return {"model": args.model, "sentences": len(sentences), "sentences_per_s": round(len(sentences) / seconds, 1)}


def _emit(rows: list, row: dict, env: dict) -> None:
    rows.append(row)
    print(json.dumps({**row, **env}), flush=True)


def run_size(n: int, args, env: dict, tmp: Path, rows: list) -> None:
    parts = {p.strip() for p in args.bench_parts.split(",")}
    x, y = unit_rows(tmp / "x.f16", n, 1), unit_rows(tmp / "y.f16", n, 2)
    queries = min(n, args.bench_queries)
    if "exact" in parts:
        _emit(rows, {"bench": "exact", "n": n, **bench_exact(x, y, queries, args)}, env)
    if faiss_or_none() is None:
        _emit(rows, {"bench": "approximate", "n": n, "skipped": "faiss is not installed"}, env)
        return
    factory, sample = default_factory(n)
    factory, sample = args.index or factory, args.index_sample or sample
    if "approximate" in parts:
        row, _ = bench_approximate(x, y, queries, factory, sample, args)
        _emit(rows, {"bench": "approximate", "n": n, **row}, env)
    if "recall" in parts:
        x = unit_rows(tmp / "px.f16", n, 3)
        y = unit_rows(tmp / "py.f16", n, 4, planted=np.asarray(x[:queries], np.float32), noise=0.8)
        index = build_index(y, factory, sample=sample, nprobe=args.nprobe, block=args.block)
        _emit(rows, {"bench": "recall", "n": n, "factory": factory, **recall(x, y, index, queries, args)}, env)


def table(rows: list) -> str:
    lines = ["| bench | n per side | what | sentences/s | notes |", "| --- | ---: | --- | ---: | --- |"]
    for r in rows:
        if r["bench"] == "exact":
            notes = f"{r['queries']} queries in {r['seconds']} s, {r['gflops']} GFLOP/s; n x n run {r['full_run_s']} s"
            lines.append(f"| exact | {r['n']} | blocked GEMM, both directions | {r['sentences_per_s']} | {notes} |")
        elif r["bench"] == "approximate" and "factory" in r:
            notes = f"train ({r['sample']} rows) + add {r['train_add_s']} s; nprobe {r['nprobe']}, rerank {r['rerank']}"
            lines.append(f"| approximate | {r['n']} | {r['factory']} | {r['sentences_per_s']} | {notes} |")
        elif r["bench"] == "recall":
            notes = f"planted top-1: exact {r['planted_top1_exact']}, approximate {r['planted_top1_approx']}"
            lines.append(f"| recall@k | {r['n']} | {r['factory']} | {r['recall_at_k']} | {notes} |")
        elif r["bench"] == "embed":
            lines.append(f"| embed | {r['sentences']} | {r['model']} | {r['sentences_per_s']} | |")
    return "\n".join(lines)


def bench(args) -> int:
    args.bench_device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    env, rows = environment(), []
    if args.model is not None:
        _emit(rows, {"bench": "embed", **bench_embed(args)}, env)
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        for size in args.bench_sizes.split(","):
            run_size(int(float(size)), args, env, Path(tmp), rows)
    print(table(rows))
    return 0
