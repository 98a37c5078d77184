"""attention="auto" and the fused KoLeo, decided once for the whole run (pipeline/model/backends.py holds the rules).

Rank 0 checks and times the kernels; every rank adopts its choice through one object broadcast over the gloo control
plane. Each rank timing on its own could leave ranks on different backends (two timings a few percent apart fall
either way), and the Triton kernel and varlen agree only to rounding: the ranks would train slightly different
functions whose gradients are averaged as if they were one.

The timing batch is representative of the run: pairs drawn at random over the whole split (not its first rows, which
are one corpus and one length range), each side cut to --max-length, as many as a micro batch holds (--batch-pairs,
or the token budget at the sample's mean cost), in the trainer's order of sequences (4 views per pair).
"""

from __future__ import annotations

import logging

import numpy as np

from runtime import collectives

log = logging.getLogger(__name__)
SAMPLE = 1 << 14  # rows whose mean length sizes a token-budget timing batch


def timing_lengths(lengths: np.ndarray, max_length: int | None, batch_pairs: int, batch_tokens: int,
                   seed: int = 0) -> list[int]:  # fmt: skip
    """Token counts of the 4 views of a micro batch of random pairs: [src, trg] per pair, then the same again.

    lengths: the split's (N, 2) pair lengths (memory-mapped: only the drawn rows are read)."""
    n = len(lengths)
    rng = np.random.default_rng([seed, 0x7131])
    rows = np.sort(rng.integers(0, n, size=min(n, SAMPLE)))
    drawn = np.asarray(lengths[rows], dtype=np.int64)  # (S, 2)
    drawn = drawn[rng.permutation(len(drawn))]  # random order again: the first k are a random draw
    if max_length:
        drawn = np.minimum(drawn, max_length)
    k = batch_pairs or max(1, int(batch_tokens // max(1.0, 2 * drawn.sum(axis=1).mean())))  # pairs of mean cost
    pairs = drawn[: min(k, len(drawn))]
    views = [int(x) for pair in pairs for x in pair]  # masked src, masked trg per pair
    return views + views  # and the clean views


def choose_backends(model, device, dtype, lengths: list[int], rank: int, select=None) -> dict:
    """Rank 0 resolves the backends (`model.select_backends`, or `select`); every rank sets `model.backends` to
    rank 0's and gets its report (for the log and config.json)."""
    decided = None
    if rank == 0:
        report = (select or model.select_backends)(device, dtype, lengths)
        report["timing_batch"] = {"sequences": len(lengths), "tokens": int(sum(lengths)),
                                  "mean_length": round(sum(lengths) / max(1, len(lengths)), 1)}  # fmt: skip
        decided = (model.backends, report)
    backends, report = collectives.broadcast_object(decided, src=0)
    model.backends = backends
    return report
