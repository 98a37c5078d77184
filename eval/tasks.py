"""What the BUCC and Tatoeba tasks of ``python -m eval`` share with xsim: distributed encoding and result files.

Sentence sets are cut into chunks of ``CHUNK`` sentences, so a task with a few large sets (BUCC: two sides of two
splits per pair, 100k-400k sentences each) still spreads over every rank; the chunks go through the same
longest-first plan and gather as xsim's sets (``eval.sharded.encode_share``). A chunk is encoded the same way whatever
rank holds it, so the results equal one process's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from eval import shares

CHUNK = 16384  # sentences per unit of work


def encode_sets(args, texts: dict[str, list[str]], rank: int, size: int) -> tuple[dict | None, dict]:
    """Embeddings of every set on rank 0 (None elsewhere) and the timing entry of results.json."""
    from eval.sharded import encode_share

    pieces = {
        f"{name}#{i}": lines[a : a + CHUNK]
        for name, lines in texts.items()
        for i, a in enumerate(range(0, len(lines), CHUNK))
    }
    local, encode_s, n_local = encode_share(args, pieces, rank, size)
    parts = shares.gather(local)
    timing = {
        "world_size": size,
        "encode_s_rank0": round(encode_s, 3),
        "sentences_per_s_rank0": round(n_local / max(encode_s, 1e-9), 1),
    }
    if parts is None:
        return None, timing
    emb = {}
    for name, lines in texts.items():
        chunks = [parts[f"{name}#{i}"] for i in range(len(range(0, len(lines), CHUNK)))]
        emb[name] = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return emb, timing


def write_results(results: dict, out: str | Path, table: str) -> list[Path]:
    """results.json (the contract) and results.md (``table``, also printed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths[1].write_text(table, encoding="utf-8")
    print(table, end="")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return paths


class Clock:
    """Seconds since construction, for the ``score_s`` timing."""

    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)
