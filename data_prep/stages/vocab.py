"""Stage `vocab` (one task): the held-out split's last decision and the tokenizer.

Valid split: a pair is held out when its key is below `valid_fraction * 2^64` (decided in each dedup task). When
that gives fewer than `--min-valid` pairs, the smallest keys overall are held out instead (each dedup partition
reports its smallest few; one pair always stays in train): `split.json` lists them for the encode tasks.

Tokenizer: `--tokenizer` is copied; `--train-tokenizer N` trains a Unigram model on a sample drawn in parallel.
The sample is balanced over language pairs with the training sampler's temperature rule: pair p gets a share of
the `--tokenizer-max-sentences` budget proportional to n_p ** alpha (`--tokenizer-alpha`; n_p its kept pairs),
capped at n_p, the rest going to the other pairs (water-filling). A pair is in the sample when a remix of its key
falls under its pair's threshold, so the sample does not depend on how the input is cut into tasks. The dedup
tasks keep candidates at twice the budget on the counts before dedup (known before they run); this task thins
them to the thresholds of the counts after dedup. alpha 1 is a uniform sample of the corpus; alpha 0 gives every
language pair the same share, so a corpus dominated by a few pairs does not starve the small languages'
vocabulary.
"""

from __future__ import annotations

import logging

import numpy as np

from ..tokenizer import save_pretrained_copy, train_unigram
from .common import Step, read_ipc, read_json, write_json

log = logging.getLogger("data_prep")
GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # the sample remixes the key (times this, mod 2^64): not the valid rows


def sample_rates(counts: dict[str, int], alpha: float, max_sentences: int | None) -> dict[str, float]:
    """Share of each language pair's pairs in the tokenizer sample (1.0: all of them)."""
    names = sorted(counts)
    n = np.array([counts[k] for k in names], dtype=np.float64)
    if max_sentences is None or not len(n) or max_sentences / 2 >= n.sum():
        return dict.fromkeys(names, 1.0)
    rate, open_, budget = np.zeros_like(n), n > 0, max_sentences / 2
    while open_.any():
        weight = np.where(open_, np.power(n, alpha, where=open_, out=np.zeros_like(n)), 0.0)
        share = budget * weight / weight.sum()
        full = open_ & (share >= n)
        if not full.any():
            rate[open_] = share[open_] / n[open_]
            break
        rate[full], budget = 1.0, budget - n[full].sum()
        open_ &= ~full
    return dict(zip(names, rate.tolist()))


def sample_thresholds(counts: dict[str, int], alpha: float, max_sentences: int | None) -> dict[str, int | None]:
    """Per pair: the remixed key must be below this (None: every pair of that language pair is in the sample)."""
    rates = sample_rates(counts, alpha, max_sentences)
    return {k: None if r >= 1.0 else int(r * 2.0**64) for k, r in rates.items()}


def in_sample(keys: np.ndarray, pairs: np.ndarray, thresholds: dict[str, int | None]) -> np.ndarray:
    """Boolean mask of the rows in the tokenizer sample (keys uint64, pairs 'src-trg' strings)."""
    with np.errstate(over="ignore"):
        mixed = keys * GOLDEN
    uniq, inv = np.unique(pairs, return_inverse=True)
    every = np.array([thresholds.get(str(p), 0) is None for p in uniq], dtype=bool)
    limit = np.array([0 if every[i] else thresholds.get(str(p), 0) for i, p in enumerate(uniq)], dtype=np.uint64)
    return every[inv] | (mixed < limit[inv])


def held_out_keys(stats: list[dict], min_valid: int) -> list[int] | None:
    """The keys of the valid split when the threshold gives fewer than `min_valid` pairs; None otherwise."""
    kept = sum(s["kept"] for s in stats)
    if sum(s["valid"] for s in stats) >= min_valid:
        return None
    smallest = sorted(k for s in stats for k in s["smallest"])
    return smallest[: min(min_valid, max(kept - 1, 0))]


class VocabStep(Step):
    """One task: `split.json` and the tokenizer (build/tokenizer, scratch/tokenizer.json)."""

    def run(self, task: int) -> None:
        plan, work = self.plan, self.paths
        cfg = plan.config
        stats = [read_json(work.file("dedup", p, "json")) for p in range(plan.partitions)]
        write_json(work.one("split.json"), {"valid_keys": held_out_keys(stats, cfg["min_valid"])})
        tok_dir = work.build / "tokenizer"
        if cfg["tokenizer"] is not None:
            info = save_pretrained_copy(cfg["tokenizer"], tok_dir)
        else:
            if sum(s["kept"] for s in stats) == 0:
                raise ValueError("no pair survived cleaning; nothing to train a tokenizer on (see the skip counts)")
            kept: dict[str, int] = {}
            for st in stats:
                for pair, n in st["pairs"].items():
                    kept[pair] = kept.get(pair, 0) + n
            final = sample_thresholds(kept, cfg["tokenizer_alpha"], cfg["tokenizer_max_sentences"])
            log.info("training a %d-id unigram tokenizer on about %d sentences", cfg["train_tokenizer"],
                     min(2 * sum(kept.values()), cfg["tokenizer_max_sentences"] or 2**62))  # fmt: skip
            drawn: dict[str, int] = {}
            info = train_unigram(self._texts(final, drawn), cfg["train_tokenizer"], tok_dir, show_progress=False)
            if info.vocab_size < cfg["train_tokenizer"]:
                log.warning(
                    "--train-tokenizer %d: the text supports only %d ids", cfg["train_tokenizer"], info.vocab_size
                )
            info.sample = dict(sorted(drawn.items()))
        write_json(work.one("tokenizer.json"), {**info.to_json(), "backend": info.backend})

    def _texts(self, thresholds: dict[str, int | None], drawn: dict[str, int]):
        """src and trg of every sampled pair, partition by partition (global key order); `drawn` counts the
        sampled pairs per language pair."""
        for p in range(self.plan.partitions):
            table = read_ipc(self.paths.file("sample", p, "arrow"))
            for batch in table.to_batches(8192):
                pairs = batch.column("pair").to_numpy(zero_copy_only=False)
                every = np.array([thresholds.get(str(x), 0) is None for x in pairs], dtype=bool)
                limit = np.array([0 if e else thresholds.get(str(x), 0) for x, e in zip(pairs, every)], np.uint64)
                keep = every | (batch.column("mixed").to_numpy() < limit)
                for pair in pairs[keep]:
                    drawn[pair] = drawn.get(pair, 0) + 1
                for src, trg, k in zip(batch.column("src").to_pylist(), batch.column("trg").to_pylist(), keep):
                    if k:
                        yield src
                        yield trg
