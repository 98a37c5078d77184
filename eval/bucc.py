"""BUCC 2018 bitext mining (Zweigenbaum et al. 2018) as LASER's ``tasks/bucc`` scores it.

Layout (the shared task's archives, e.g. ``bucc2018-de-en.training-gold.tar.bz2``): ``DIR/{pair}.{split}.{lang}``
(or ``DIR/{pair}/{pair}.{split}.{lang}``) with ``id <tab> sentence`` lines, and ``{pair}.{split}.gold`` with
``src_id <tab> trg_id`` lines; ``pair`` is ``{xx}-en``, the source is xx, the target English.

Scoring, as LASER's ``bucc.sh`` + ``bucc.py``:

1. Each side's sentences are unified (``--unify``), embedded, and mined with the ratio margin, k = 4, ``max``
   retrieval and LASER's default threshold 0 (``eval.mining``): the candidates.
2. A candidate maps back to ids through its sentence text (stripped); a sentence that occurs on several lines of
   its side is dropped, having no single id. Equal (src_id, trg_id) keep their highest score.
3. The threshold maximising F1 against the gold of the threshold split (``training``) is the midpoint between the
   best-F1 candidate's score and the next one's (LASER's ``BuccOptimize``; when the best is the last candidate,
   whose successor LASER's loop would index past the end, its own score). Candidates scoring at least the
   threshold are extracted, and precision, recall and F1 are counted against the gold of the evaluated split.

``bucc_f1`` does steps 1-3 on two embedding matrices, for use outside the command line (e.g. a training hook).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.data import DataError
from eval.mining import mine, neighbours
from runtime import collectives, devices

PAIRS = ("de-en", "fr-en", "ru-en", "zh-en")


@dataclass
class BuccSplit:
    """One split of one pair: per line ids and sentences of both sides, and the gold pairs when the file exists."""

    pair: str
    split: str
    src_ids: list[str]
    src_sents: list[str]
    trg_ids: list[str]
    trg_sents: list[str]
    gold: set[tuple[str, str]] | None


def find_file(root: Path, pair: str, name: str) -> Path | None:
    for path in (root / name, root / pair / name):
        if path.is_file():
            return path
    return None


def _read_tsv(path: Path, fields: int) -> list[list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err})") from err
    if lines and lines[-1] == "":
        lines.pop()
    rows = []
    for number, line in enumerate(lines, 1):
        row = line.rstrip("\r").split("\t", fields - 1)
        if len(row) != fields or not row[0].strip():
            raise DataError(f"{path}:{number}: expected {fields} tab-separated fields, got {len(row)}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: empty file")
    return rows


def read_split(root: str | Path, pair: str, split: str, need_gold: bool, flags: tuple[str, str] = ("--bucc", "--pair")):
    """One split of one pair (a BuccSplit); `flags`: the directory's and the pair's flag, named in the messages."""
    root, (root_flag, pair_flag) = Path(root), flags
    if not root.is_dir():
        raise DataError(f"{root_flag} {root}: not a directory")
    langs = pair.split("-")
    if len(langs) != 2 or not all(langs):
        raise DataError(f"{pair_flag} {pair}: expected SRC-TRG, e.g. de-en")
    sides = []
    for lang in langs:
        path = find_file(root, pair, f"{pair}.{split}.{lang}")
        if path is None:
            raise DataError(f"{root_flag} {root}: no {pair}.{split}.{lang} there or in {root / pair}")
        rows = _read_tsv(path, 2)
        sides.append(([r[0].strip() for r in rows], [r[1] for r in rows]))
    gold_path = find_file(root, pair, f"{pair}.{split}.gold")
    if gold_path is None and need_gold:
        raise DataError(f"{root_flag} {root}: no {pair}.{split}.gold (the threshold is chosen on a split with gold)")
    gold = None if gold_path is None else {(a.strip(), b.strip()) for a, b in _read_tsv(gold_path, 2)}
    return BuccSplit(pair, split, *sides[0], *sides[1], gold)


def unify(sents: list[str]) -> list[str]:
    """Distinct sentences in order of first occurrence (LASER's ``--unify``)."""
    return list(dict.fromkeys(sents))


def row_ids(ids: list[str], sents: list[str], rows: list[str]) -> list[str | None]:
    """The id of each mined row's sentence (matched stripped); None for a sentence on several lines."""
    seen: dict[str, str | None] = {}
    for i, sent in zip(ids, sents):
        key = sent.strip()
        seen[key] = None if key in seen else i
    return [seen.get(row.strip()) for row in rows]


def best_threshold(cand: dict[tuple[str, str], float], gold: set[tuple[str, str]]) -> float:
    """LASER's ``BuccOptimize``: scan the candidates by descending score (stable), keep the F1 maximum."""
    items = sorted(cand.items(), key=lambda item: -item[1])
    correct, best_f1, threshold = 0, 0.0, 0.0
    for i, (pair, score) in enumerate(items):
        correct += pair in gold
        if correct:
            precision, recall = correct / (i + 1), correct / len(gold)
            f1 = 2 * precision * recall / (precision + recall)
            if f1 > best_f1:
                best_f1 = f1
                threshold = (score + items[i + 1][1]) / 2 if i + 1 < len(items) else score
    return threshold


def prf(extracted: list[tuple[str, str]], gold: set[tuple[str, str]] | None) -> dict:
    """Precision, recall and F1 (fractions) of the extracted pairs; None without gold."""
    if gold is None:
        return {"precision": None, "recall": None, "f1": None, "correct": None, "gold": None}
    correct = len(gold.intersection(extracted))
    p = correct / len(extracted) if correct else 0.0
    r = correct / len(gold) if correct else 0.0
    f1 = 2 * p * r / (p + r) if correct else 0.0
    return {"precision": p, "recall": r, "f1": f1, "correct": correct, "gold": len(gold)}


def candidates(src_emb, trg_emb, src_ids, trg_ids, *, k=4, margin="ratio", device=None) -> dict:
    """{(src_id, trg_id): score} of the ``max``-retrieval pairs scoring above 0 whose rows have an id."""
    pairs = mine(neighbours(src_emb, trg_emb, k, device=device), margin, "max", 0.0)
    cand: dict[tuple[str, str], float] = {}
    for score, s, t in zip(pairs.scores.tolist(), pairs.src.tolist(), pairs.trg.tolist()):
        key = (src_ids[s], trg_ids[t])
        if None not in key:
            cand[key] = max(score, cand.get(key, score))
    return cand


def bucc_f1(src_emb, trg_emb, gold, *, threshold=None, k=4, margin="ratio", src_ids=None, trg_ids=None, device=None):
    """Mine two embedding matrices and score against ``gold`` (a set of (src_id, trg_id); ids default to the row
    numbers as strings; an id None drops the row). ``threshold`` None: the F1-maximising one on this gold (an
    upper bound, the threshold tuned on the test itself). Returns the ``prf`` fields, ``threshold``,
    ``extracted`` and ``candidates``."""
    src_ids = [str(i) for i in range(len(src_emb))] if src_ids is None else src_ids
    trg_ids = [str(i) for i in range(len(trg_emb))] if trg_ids is None else trg_ids
    cand = candidates(src_emb, trg_emb, src_ids, trg_ids, k=k, margin=margin, device=device)
    if threshold is None:
        threshold = best_threshold(cand, gold)
    extracted = [pair for pair, score in cand.items() if score >= threshold]
    return {**prf(extracted, gold), "threshold": threshold, "extracted": len(extracted), "candidates": len(cand)}


def pooled(entries: dict[str, dict]) -> dict:
    """Micro-averaged precision, recall and F1 over the pairs with gold, and the mean F1 (macro)."""
    scored = [e for e in entries.values() if e["gold"] is not None]
    correct, gold = sum(e["correct"] for e in scored), sum(e["gold"] for e in scored)
    extracted = sum(e["extracted"] for e in scored)
    p = correct / extracted if correct else 0.0
    r = correct / gold if correct else 0.0
    out = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if correct else 0.0}
    out.update(correct=correct, gold=gold, extracted=extracted)
    out["f1_mean"] = float(np.mean([e["f1"] for e in scored])) if scored else None
    return out


# ---------------------------------------------------------------- python -m eval --task bucc


def load(args) -> tuple[dict[str, tuple[BuccSplit, BuccSplit]], dict[str, list[str]]]:
    """Per pair the threshold split and the evaluated split; the sentence sets to encode (unified)."""
    pairs = [p.strip() for p in (args.pair or "").split(",") if p.strip()]
    if not pairs:
        raise DataError(f"--task bucc needs --pair (e.g. {','.join(PAIRS)})")
    splits, texts = {}, {}
    for pair in dict.fromkeys(pairs):
        tune = read_split(args.bucc, pair, args.bucc_threshold_split, need_gold=True)
        test = tune if args.split == tune.split else read_split(args.bucc, pair, args.split, need_gold=False)
        splits[pair] = (tune, test)
        for part in {tune.split: tune, test.split: test}.values():
            texts[f"{pair}.{part.split}.src"] = unify(part.src_sents)
            texts[f"{pair}.{part.split}.trg"] = unify(part.trg_sents)
    return splits, texts


def _score_pair(args, emb, texts, tune: BuccSplit, test: BuccSplit, device) -> tuple[dict, list]:
    def ids(part, side):
        rows = texts[f"{part.pair}.{part.split}.{side}"]
        return row_ids(getattr(part, f"{side}_ids"), getattr(part, f"{side}_sents"), rows)

    def embs(part):
        return emb[f"{part.pair}.{part.split}.src"], emb[f"{part.pair}.{part.split}.trg"]

    opts = {"k": args.k, "margin": args.margin, "device": device}
    tuned = bucc_f1(*embs(tune), tune.gold, src_ids=ids(tune, "src"), trg_ids=ids(tune, "trg"), **opts)
    cand = candidates(*embs(test), ids(test, "src"), ids(test, "trg"), **opts)
    extracted = [pair for pair, score in cand.items() if score >= tuned["threshold"]]
    entry = {**prf(extracted, test.gold), "threshold": tuned["threshold"], "extracted": len(extracted)}
    entry.update(candidates=len(cand), threshold_split_f1=tuned["f1"])
    return entry, extracted


def markdown(results: dict) -> str:
    def pct(v):
        return "" if v is None else f"{100 * v:.2f}"

    where = f"{results['bucc']} ({results['split']}, threshold on {results['threshold_split']})"
    lines = [
        f"# BUCC: {results['model']} on {where}",
        "",
        "| pair | threshold | extracted | P % | R % | F1 % |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for pair, e in results["languages"].items():
        lines.append(f"| {pair} | {e['threshold']:.4f} | {e['extracted']} | {pct(e['precision'])} | "
                     f"{pct(e['recall'])} | {pct(e['f1'])} |")  # fmt: skip
    a = results["average"]
    lines.append(f"| **pooled** | | {a['extracted']} | {pct(a['precision'])} | {pct(a['recall'])} | {pct(a['f1'])} |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    from eval.tasks import Clock, encode_sets, write_results

    rank, size = collectives.init_eval()
    splits, texts = load(args)  # every rank validates, so a bad input stops all ranks alike
    emb, timing = encode_sets(args, texts, rank, size)
    if rank != 0:
        return 0
    clock, device, languages = Clock(), devices.device_for(args.device), {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for pair, (tune, test) in splits.items():
        languages[pair], extracted = _score_pair(args, emb, texts, tune, test, device)
        lines = "".join(f"{s}\t{t}\n" for s, t in extracted)
        (out / f"{pair}.{test.split}.extracted.tsv").write_text(lines, encoding="utf-8")
    results = {"task": "bucc", "model": args.model, "bucc": str(args.bucc), "split": args.split}
    results.update(threshold_split=args.bucc_threshold_split, margin=args.margin, k=args.k, retrieval="max")
    results.update(languages=languages, average=pooled(languages), timing={**timing, "score_s": clock.seconds()})
    write_results(results, out, markdown(results))
    return 0
