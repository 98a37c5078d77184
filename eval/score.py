"""Scoring of gathered embeddings: X -> target xsim, xsim++ with error types, and LASER's N-way matrix.

Pooled averages follow LASER's ``eval.py``: 100 x sum(errors) / sum(n) over the pairs, not a mean of
percentages (the N-way matrix also reports LASER's per-column mean of percentages, ``global_mean_pct``).
"""

from __future__ import annotations

import numpy as np

from eval.data import Augmented
from eval.xsim import count_errors, errtype_breakdown, nearest


def entry(errors: int, n: int) -> dict:
    return {"errors": int(errors), "n": int(n), "error_pct": 100.0 * errors / n}


def pooled(entries: dict[str, dict]) -> dict:
    return entry(sum(e["errors"] for e in entries.values()), sum(e["n"] for e in entries.values()))


class Scorer:
    """xsim of one embedding set against another with fixed margin, k, comparison and device."""

    def __init__(self, margin="ratio", k=4, index_comparison=False, device=None, block_bytes=256 * 2**20):
        self.margin, self.k, self.index_comparison = margin, k, index_comparison
        self.device, self.block_bytes = device, block_bytes

    def best(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return nearest(x, y, self.margin, self.k, device=self.device, block_bytes=self.block_bytes)

    def errors(self, x: np.ndarray, y: np.ndarray, target_texts: list[str]) -> dict:
        best = self.best(x, y)
        return entry(count_errors(best, None if self.index_comparison else target_texts), x.shape[0])


def score_to_target(scorer: Scorer, emb: dict, texts: dict, langs: list[str], target: str) -> dict:
    """``languages`` (each source language against the target) and their pooled ``average``."""
    y, y_text = emb[target], texts[target]
    languages = {lang: scorer.errors(emb[lang], y, y_text) for lang in langs}
    return {"languages": languages, "average": pooled(languages)}


def score_xsimpp(scorer: Scorer, emb: dict, texts: dict, langs: list[str], target: str, aug: Augmented) -> dict:
    """xsim++: the target side gains the augmented sentences as hard negatives; errors broken down by type
    (by text, also under ``--index-comparison``, where LASER would report no breakdown)."""
    y = np.concatenate([emb[target], emb[f"{target}_augmented"]])
    y_text = texts[target] + aug.lines
    languages, errtypes = {}, {}
    for lang in langs:
        best = scorer.best(emb[lang], y)
        texts_or_none = None if scorer.index_comparison else y_text  # LASER: the combined file's lines, or indices
        languages[lang] = entry(count_errors(best, texts_or_none), best.shape[0])
        errtypes[lang] = errtype_breakdown(best, y_text, aug.errtypes)
    totals: dict[str, int] = {}
    for report in errtypes.values():
        for kind, count in report.items():
            totals[kind] = totals.get(kind, 0) + count
    return {"languages": languages, "average": pooled(languages), "errtypes": errtypes, "errtype_totals": totals}


def score_nway(scorer: Scorer, emb: dict, texts: dict, langs: list[str]) -> dict:
    """Every ordered pair (src, trg), src != trg, as LASER's ``--nway``; per-source pooled ``languages``."""
    pairs = {f"{s}-{t}": scorer.errors(emb[s], emb[t], texts[t]) for s in langs for t in langs if s != t}
    languages = {s: pooled({p: e for p, e in pairs.items() if p.startswith(f"{s}-")}) for s in langs}
    columns = [np.mean([pairs[f"{s}-{t}"]["error_pct"] for s in langs if s != t]) for t in langs]
    return {
        "pairs": pairs,
        "languages": languages,
        "average": pooled(pairs),
        "global_mean_pct": float(np.mean(columns)) if len(langs) > 1 else 0.0,
    }


def score_sets(scorer: Scorer, emb: dict, texts: dict, langs: list[str], target: str, aug: Augmented | None) -> dict:
    """X -> target xsim (``languages``, ``average``) and, when ``aug`` is given, ``xsimpp``: what ``python -m eval``
    reports without ``--nway``, and what the evaluation inside training (eval/train_hook.py) records."""
    results = score_to_target(scorer, emb, texts, langs, target)
    if aug is not None:
        results["xsimpp"] = score_xsimpp(scorer, emb, texts, langs, target, aug)
    return results
