"""Tatoeba similarity search (Artetxe & Schwenk 2019, the LASER test set of 112 languages) as LASER scores it.

Layout (LASER's ``data/tatoeba/v1``): ``DIR/tatoeba.{xxx}-eng.{xxx}`` and ``DIR/tatoeba.{xxx}-eng.eng``, line i of
both files a translation pair (up to 1000 per language; each language has its own English sentences). For every
language both directions are searched, xxx -> eng and eng -> xxx: the nearest sentence of the other side by cosine
(LASER's similarity search; ``--margin`` ratio/distance switches to xsim's margin retrieval), an error when it is
not the aligned line (by index, as LASER's ``similarity_search.py`` counts by default). Per language the two
directions are reported and pooled; the average pools every language and direction.
"""

from __future__ import annotations

from pathlib import Path

from eval.data import DataError, read_lines
from eval.score import entry, pooled
from eval.xsim import count_errors, nearest
from runtime import collectives, devices


def available(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"--tatoeba {root}: not a directory")
    langs = sorted(p.name.split(".")[1][: -len("-eng")] for p in root.glob("tatoeba.*-eng.*") if p.is_file())
    langs = [lang for lang in dict.fromkeys(langs) if (root / f"tatoeba.{lang}-eng.{lang}").is_file()]
    if not langs:
        raise DataError(f"--tatoeba {root}: no tatoeba.xxx-eng.xxx files")
    return langs


def load(args) -> tuple[list[str], dict[str, list[str]]]:
    """Languages and the sentence sets ``{xxx}`` and ``{xxx}-eng.eng``; every check before encoding."""
    root = Path(args.tatoeba)
    found = available(root)
    if args.langs.strip() == "all":
        langs = [lang for lang in found if lang != "eng"]
    else:
        langs = list(dict.fromkeys(g.strip() for g in args.langs.split(",") if g.strip()))
        missing = [lang for lang in langs if lang not in found]
        if missing:
            raise DataError(f"--langs: missing {', '.join(missing)} in {root} (available: {', '.join(found)})")
    texts = {}
    for lang in langs:
        src, eng = root / f"tatoeba.{lang}-eng.{lang}", root / f"tatoeba.{lang}-eng.eng"
        if not eng.is_file():
            raise DataError(f"{eng}: missing (the English side of {src.name})")
        texts[lang], texts[f"{lang}-eng.eng"] = read_lines(src), read_lines(eng)
        if len(texts[lang]) != len(texts[f"{lang}-eng.eng"]):
            raise DataError(f"{src} has {len(texts[lang])} lines but {eng} has {len(texts[f'{lang}-eng.eng'])}")
    return langs, texts


def score_language(x, y, margin: str, k: int, device) -> dict:
    """Both directions' errors of one language (x: xxx, y: its English), counted by index, and their pool."""
    k = min(k, x.shape[0])
    fwd = entry(count_errors(nearest(x, y, margin, k, device=device)), x.shape[0])
    bwd = entry(count_errors(nearest(y, x, margin, k, device=device)), y.shape[0])
    return {**pooled({"xx_eng": fwd, "eng_xx": bwd}), "xx_eng": fwd, "eng_xx": bwd}


def markdown(results: dict) -> str:
    lines = [
        f"# Tatoeba: {results['model']} on {results['tatoeba']} ({results['margin']}, errors by index)",
        "",
        "| language | n | xxx->eng % | eng->xxx % | both % |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    rows = [*results["languages"].items(), ("**average**", results["average"])]
    for lang, e in rows:
        lines.append(f"| {lang} | {e['xx_eng']['n']} | {e['xx_eng']['error_pct']:.2f} | "
                     f"{e['eng_xx']['error_pct']:.2f} | {e['error_pct']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run(args) -> int:
    from eval.tasks import Clock, encode_sets, write_results

    rank, size = collectives.init_eval()
    langs, texts = load(args)  # every rank validates, so a bad input stops all ranks alike
    emb, timing = encode_sets(args, texts, rank, size)
    if rank != 0:
        return 0
    clock, device = Clock(), devices.device_for(args.device)
    languages = {lang: score_language(emb[lang], emb[f"{lang}-eng.eng"], args.margin, args.k, device) for lang in langs}
    average = pooled(languages)
    for key in ("xx_eng", "eng_xx"):
        average[key] = pooled({lang: e[key] for lang, e in languages.items()})
    results = {"task": "tatoeba", "model": args.model, "tatoeba": str(args.tatoeba), "margin": args.margin}
    results.update(k=args.k, comparison="index", languages=languages, average=average)
    results["timing"] = {**timing, "score_s": clock.seconds()}
    write_results(results, args.out, markdown(results))
    return 0
