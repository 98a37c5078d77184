"""Bitext mining F1 inside the run (`--mine-every N --mine-data DIR --mine-pair xx-en`), as BUCC scores it.

- inputs: one split (--mine-split, default `sample`) of each --mine-pair in the BUCC 2018 layout (eval/bucc.py:
  `{pair}.{split}.{xx,en}` with `id <tab> sentence` lines, `{pair}.{split}.gold`), read with `eval.bucc.read_split`
  at start-up, before any training step; a held-out pair set written in that layout works alike. Each side is unified
  (distinct sentences) and tokenised once with the run's tokenizer at its --max-length;
- encoding: as the xsim hook's (eval/train_hook.py `LiveEncoder`): every rank encodes its share of the sides, in eval
  mode, under `torch.no_grad()`, with the RNG states and the train/eval mode restored, so a run with --mine-every has
  the same losses as one without (tests/pipeline/test_mine_train.py);
- scoring on rank 0 (`eval.bucc.bucc_f1`): ratio margin, k = 4, `max` retrieval, and the threshold that maximises F1
  on this split's own gold. That is an upper bound of what a threshold tuned elsewhere reaches, but the same rule at
  every step, so the curve is comparable; `python -m eval --task bucc` tunes on the training split and scores the
  test split. The record (metrics.jsonl split "mine") holds the pooled (micro-averaged) precision, recall and F1 in
  %, and the F1 of each pair; every rank gets it by broadcast.

Best checkpoint: with --best-metric mine (or auto without --xsim-every) this hook keeps `best`, as the xsim hook
does (`EvalHook`), on a strictly higher pooled F1. best.json records the metric (`mine_f1_pct`) and the mining set's
fingerprint (sha256 of split, pairs, ids, sentences and gold); the fingerprint is also in the run record
(`mine_sha256`), so a relaunch on another mining set needs --allow-config-change and starts a new `best` lineage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import astuple

import torch

from eval.bucc import BuccSplit, bucc_f1, pooled, read_split, row_ids, unify
from eval.data import DataError
from eval.train_hook import EvalHook, LiveEncoder
from pipeline.config import ConfigError
from pipeline.training.metrics import log

METRIC = "mine_f1_pct"  # pooled mining F1 %, higher is better
K = 4  # margin neighbourhood (LASER's BUCC default)
FLAGS = ("--mine-data", "--mine-pair")


def mining_set_fingerprint(split: str, parts: dict[str, BuccSplit]) -> str:
    """sha256 of what the hook scores: the split, and each pair's ids, sentences and sorted gold."""
    h = hashlib.sha256(json.dumps([split, sorted(parts)]).encode())
    for pair in sorted(parts):
        fields = astuple(parts[pair])
        h.update(json.dumps([*fields[:-1], sorted(fields[-1])], ensure_ascii=False).encode())
    return h.hexdigest()


def read_parts(run_cfg) -> dict[str, BuccSplit]:
    """Every --mine-pair's split, checked: files present and well formed, gold present, >= K sentences a side."""
    pairs = list(dict.fromkeys(p.strip() for p in run_cfg.mine_pair.split(",") if p.strip()))
    parts = {}
    for pair in pairs:
        try:
            part = read_split(run_cfg.mine_data, pair, run_cfg.mine_split, need_gold=True, flags=FLAGS)
        except DataError as e:  # a bad --mine-* value or file: refused like any bad flag (exit 2)
            raise ConfigError(str(e)) from e
        n = min(len(unify(part.src_sents)), len(unify(part.trg_sents)))
        if n < K:
            raise ConfigError(f"--mine-data {run_cfg.mine_data}: {pair}.{run_cfg.mine_split} has {n} distinct "
                              f"sentences on a side, the margin needs >= {K}")  # fmt: skip
        parts[pair] = part
    return parts


class MineEvaluator(LiveEncoder):
    """The mining set of one run, checked and tokenised at start-up; `run(model, device)` scores the live model."""

    every, seconds = "mine_every", "mine_s"

    def __init__(self, run_cfg, tokenizer, max_length: int, pad_id: int, rank: int = 0, world: int = 1):
        self.split, self.parts = run_cfg.mine_split, read_parts(run_cfg)
        self.texts: dict[str, list[str]] = {}
        self.row_ids: dict[str, list[str | None]] = {}
        for pair, part in self.parts.items():
            for side in ("src", "trg"):
                sents = getattr(part, f"{side}_sents")
                self.texts[f"{pair}.{side}"] = rows = unify(sents)
                self.row_ids[f"{pair}.{side}"] = row_ids(getattr(part, f"{side}_ids"), sents, rows)
        self.fingerprint = mining_set_fingerprint(self.split, self.parts)
        self._plan(self.texts, tokenizer, max_length, pad_id, rank, world)

    def _score(self, emb: dict, device: torch.device) -> dict:
        return self._record({pair: self.score(emb, pair, device) for pair in self.parts})

    def score(self, emb: dict, pair: str, device) -> dict:
        src, trg = f"{pair}.src", f"{pair}.trg"
        ids = {"src_ids": self.row_ids[src], "trg_ids": self.row_ids[trg]}
        return bucc_f1(emb[src], emb[trg], self.parts[pair].gold, k=K, device=device, **ids)

    def _record(self, entries: dict[str, dict]) -> dict:
        """Flat numbers for metrics.jsonl and wandb: pooled P / R / F1 % and each pair's F1 % and threshold."""
        avg = pooled(entries)
        record = {"split": "mine", "mine_split": self.split, "pairs": len(entries)}
        record.update({METRIC: 100 * avg["f1"], "mine_precision_pct": 100 * avg["precision"]})
        record.update(mine_recall_pct=100 * avg["recall"], gold=avg["gold"], extracted=avg["extracted"])
        record.update({f"{METRIC}/{pair}": 100 * e["f1"] for pair, e in entries.items()})
        record.update({f"mine_threshold/{pair}": e["threshold"] for pair, e in entries.items()})
        return record


class MineHook(EvalHook):
    """Mining F1 on the cadence; keeps `best` when --best-metric chooses it (module docstring)."""

    name, metric, lower_is_better, evaluator_class = "mine", METRIC, False, MineEvaluator

    def _log(self, r: dict) -> None:
        log.info(
            "mine step %d (%s, %d pairs): F1 %.2f%% (P %.2f%% R %.2f%%) | %s | %.1f s",
            r["step"],
            r["mine_split"],
            r["pairs"],
            r[METRIC],
            r["mine_precision_pct"],
            r["mine_recall_pct"],
            self._best_text(r),
            r["mine_s"],
        )
