"""The demo's mining line: mine the held-out test set's X and English sides, shuffled, and score the F1.

    python -m scripts.mine_demo --model DIR|char3gram --flores data/testset --out runs/demo/mine-trained

The sentences of a FLORES-layout split (default devtest) are parallel line by line; here each side is shuffled with a
fixed seed (English once, each X side with its own), so the alignment is lost and has to be mined back. For each
language X of `--langs` (default `every5`: every fifth language of the split in sorted order, 6 of the demo's 30;
`all` or a comma-separated list) the X side is mined against the English side as BUCC scores it (eval/bucc.py
`bucc_f1`: ratio margin, k = 4, `max` retrieval, the threshold that maximises F1 on this gold: an upper bound, the
same for every model). A sentence that occurs on several lines of its side has no single answer and is left out of
the candidates and the gold. English is encoded once. Output: OUT/mine.json (per language and pooled precision,
recall, F1; micro-averaged over the languages) and OUT/mine.md.

`--bucc-out DIR` writes the same shuffled sides in the BUCC 2018 layout instead of mining them (eval/bucc.py:
`{X}-{target}.{split}.{X}` and `.{target}` with `id <tab> sentence` lines, `.gold` with the pairs of the same original
line whose sentences are single on their side): a held-out mining set for `--mine-data` of a training, e.g. from the
dev split so that the test split stays untouched. Mining these files as the training hook does gives the F1 this
script prints for the same split, languages and seed.

`mining_lines(demo_dir)` is the report's section (scripts/report.py), read from the `mine-{label}` directories.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SEED = 0
LABELS = ("untrained", "trained", "char3gram")


def pick_languages(langs: list[str], spec: str) -> list[str]:
    if spec == "every5":
        return sorted(langs)[::5]
    if spec == "all":
        return sorted(langs)
    return [lang.strip() for lang in spec.split(",") if lang.strip()]


def shuffled(lines: list[str], seed: list[int]) -> tuple[list[str], np.ndarray]:
    """(lines in a seeded random order, the original line number of each row)."""
    order = np.random.default_rng(seed).permutation(len(lines))
    return [lines[i] for i in order], order


def single_ids(rows: list[str]) -> list[str | None]:
    """Row numbers as ids; None for a sentence on several rows (no single answer)."""
    from eval.bucc import row_ids

    return row_ids([str(i) for i in range(len(rows))], rows, rows)


def gold_pairs(src_order, trg_order, src_ids, trg_ids) -> set[tuple[str, str]]:
    """{(X row, English row)} of the same original line, both rows with an id."""
    trg_row = np.empty_like(trg_order)
    trg_row[trg_order] = np.arange(len(trg_order))
    pairs = ((src_ids[r], trg_ids[trg_row[line]]) for r, line in enumerate(src_order.tolist()))
    return {p for p in pairs if None not in p}


def shuffled_sides(texts: dict[str, list[str]], langs: list[str], target: str, seed: int = SEED):
    """The target side shuffled once, each language's side with its own seed: (target rows, their single ids, and
    per language (lang, rows, single ids, gold)); ids are row numbers, None for a sentence on several rows."""
    trg_rows, trg_order = shuffled(texts[target], [seed])
    trg_ids = single_ids(trg_rows)
    sides = []
    for i, lang in enumerate(langs, 1):
        src_rows, src_order = shuffled(texts[lang], [seed, i])
        src_ids = single_ids(src_rows)
        sides.append((lang, src_rows, src_ids, gold_pairs(src_order, trg_order, src_ids, trg_ids)))
    return trg_rows, trg_ids, sides


def mine_languages(encoder, texts: dict[str, list[str]], langs: list[str], target: str, seed: int = SEED) -> dict:
    """Per language the `bucc_f1` entry of mining its shuffled side against the shuffled target side."""
    from eval.bucc import bucc_f1

    trg_rows, trg_ids, sides = shuffled_sides(texts, langs, target, seed)
    trg_emb = encoder.encode(trg_rows)
    out = {}
    for lang, src_rows, src_ids, gold in sides:
        entry = bucc_f1(encoder.encode(src_rows), trg_emb, gold, src_ids=src_ids, trg_ids=trg_ids, device="cpu")
        out[lang] = {**entry, "lines": len(src_rows)}
    return out


def write_bucc(texts: dict[str, list[str]], langs: list[str], target: str, out: Path, split: str,
               seed: int = SEED) -> list[str]:  # fmt: skip
    """Each language's shuffled side against the shuffled target side, in the BUCC layout; returns the pair names."""
    trg_rows, _, sides = shuffled_sides(texts, langs, target, seed)  # the shuffles and gold mine_languages scores
    trg_ids = [f"{target}-{r:06d}" for r in range(len(trg_rows))]
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for lang, src_rows, _, singles in sides:
        src_ids = [f"{lang}-{r:06d}" for r in range(len(src_rows))]
        gold = sorted((src_ids[int(a)], trg_ids[int(b)]) for a, b in singles)
        pair = f"{lang}-{target}"
        for side, ids, rows in ((lang, src_ids, src_rows), (target, trg_ids, trg_rows)):
            lines = [f"{k}\t{row}\n" for k, row in zip(ids, rows)]
            (out / f"{pair}.{split}.{side}").write_text("".join(lines), encoding="utf-8")
        (out / f"{pair}.{split}.gold").write_text("".join(f"{a}\t{b}\n" for a, b in gold), encoding="utf-8")
        pairs.append(pair)
    return pairs


def languages_of(args) -> tuple[list[str], dict[str, list[str]]]:
    from eval.data import DataError, load_flores

    available, texts, _ = load_flores(args.flores, args.split, "all", args.target, xsimpp=False)
    langs = pick_languages(available, args.langs)
    missing = [lang for lang in langs if lang not in available]
    if missing or not langs:
        raise DataError(f"--langs {args.langs}: not in {args.flores}/{args.split}: {', '.join(missing) or 'none'}")
    return langs, texts


def run(args) -> dict:
    from eval.bucc import pooled
    from eval.encode import load_encoder

    langs, texts = languages_of(args)
    start = time.perf_counter()
    encoder = load_encoder(args.model, device="cpu")
    languages = mine_languages(encoder, texts, langs, args.target, args.seed)
    results = {"model": args.model, "flores": str(args.flores), "split": args.split, "target": args.target}
    results.update(langs_spec=args.langs, seed=args.seed, margin="ratio", k=4, retrieval="max")
    results.update(threshold="F1-maximising on the same gold", languages=languages, average=pooled(languages))
    results["seconds"] = round(time.perf_counter() - start, 2)
    return results


def markdown(results: dict) -> str:
    lines = [
        "| language | lines | gold | extracted | P % | R % | F1 % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for lang, e in results["languages"].items():
        lines.append(f"| {lang} | {e['lines']} | {e['gold']} | {e['extracted']} | {100 * e['precision']:.2f} | "
                     f"{100 * e['recall']:.2f} | {100 * e['f1']:.2f} |")  # fmt: skip
    a = results["average"]
    lines.append(f"| **pooled** | | {a['gold']} | {a['extracted']} | {100 * a['precision']:.2f} | "
                 f"{100 * a['recall']:.2f} | {100 * a['f1']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def mining_lines(demo_dir: Path) -> list[str]:
    """The report's mining section from `demo_dir/mine-{label}/mine.json`; [] when no model was mined."""
    found = {label: Path(demo_dir) / f"mine-{label}" / "mine.json" for label in LABELS}
    results = {label: json.loads(p.read_text()) for label, p in found.items() if p.is_file()}
    if not results:
        return []
    first = next(iter(results.values()))
    langs = ", ".join(first["languages"])
    f1 = ", ".join(f"{label} **{100 * r['average']['f1']:.2f}**" for label, r in results.items())
    return [
        f"## Bitext mining F1 % (held-out {first['split']} split, each side shuffled)",
        "",
        f"Pooled F1: {f1}. Each X side and the {first['target']} side of the held-out test set shuffled with seed "
        f"{first['seed']} and mined back with the ratio margin (k = 4, `max` retrieval, the threshold that maximises "
        f"F1 on the gold, as BUCC tunes it), pooled (micro-averaged) over {len(first['languages'])} languages: "
        f"{langs}. `python -m scripts.mine_demo`; per-language tables in `mine-*/mine.md`.",
        "",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.mine_demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", help="exported model directory, or char3gram (required unless --bucc-out)")
    p.add_argument("--flores", required=True, help="FLORES-layout test set (data/testset)")
    p.add_argument("--split", default="devtest", help="split of --flores (default devtest)")
    p.add_argument("--target", default="eng_Latn", help="the side every language is mined against")
    p.add_argument("--langs", default="every5", help="every5 (default), all, or comma-separated languages")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the shuffles")
    p.add_argument("--out", help="output directory: mine.json, mine.md (required unless --bucc-out)")
    p.add_argument("--bucc-out", help="write the shuffled sides and gold in the BUCC layout here instead of mining")
    p.add_argument("--bucc-split", default="sample", help="split name of --bucc-out's files (default sample)")
    args = p.parse_args(argv)
    if args.bucc_out is None and (args.model is None or args.out is None):
        p.error("--model and --out are required (or --bucc-out DIR to write a BUCC-layout mining set)")
    return args


def main(argv: list[str] | None = None) -> int:
    from eval.data import DataError
    from eval.encode import ModelError

    args = parse_args(argv)
    try:
        if args.bucc_out is not None:
            langs, texts = languages_of(args)
            pairs = write_bucc(texts, langs, args.target, Path(args.bucc_out), args.bucc_split, args.seed)
            flags = f"--mine-data {args.bucc_out} --mine-split {args.bucc_split} --mine-pair {','.join(pairs)}"
            print(f"wrote {len(pairs)} pairs ({args.split} of {args.flores}) in the BUCC layout; train with {flags}")
            return 0
        results = run(args)
    except (DataError, ModelError) as e:
        print(f"python -m scripts.mine_demo: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mine.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "mine.md").write_text(markdown(results), encoding="utf-8")
    a = results["average"]
    print(f"{args.model}: pooled mining F1 {100 * a['f1']:.2f}% over {len(results['languages'])} languages "
          f"({results['seconds']:.1f} s); wrote {out / 'mine.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
