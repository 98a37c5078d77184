"""Synthetic NLLB-like parallel text for the benchmark: many language pairs of very different sizes, sentence lengths
from a lognormal like the real data's, several scripts, a few duplicates and broken lines.

- 24 pairs eng_Latn -> X (Latin, Cyrillic, Greek, Arabic, Devanagari, Hangul, Thai, Armenian, Georgian scripts);
  pair sizes follow Zipf (n_k ~ 1 / k): the largest pair holds about a quarter of the corpus, as in NLLB;
- words per sentence ~ lognormal(median 15, sigma 0.55), cut to [1, 120] (NLLB: mean about 18 words, 110
  characters); the target's length is the source's times lognormal(0, 0.15); words drawn from a per-language
  vocabulary of pseudo-words (Zipf frequencies), so the tokenizer sees a realistic piece distribution;
- every pair is made unique by a running number; 1% of lines repeat an earlier line (duplicates) and 0.2% are
  broken (one field), so dedup and the skip accounting do real work.
Files: `part-NNNNN.tsv` of `pairs_per_file` lines each (about 12 MB), pairs interleaved (as a shuffled release is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCRIPTS = {  # FLORES code -> (first, last) code point of the letters its pseudo-words use
    "fra_Latn": (0x61, 0x7A), "deu_Latn": (0x61, 0x7A), "spa_Latn": (0x61, 0x7A), "por_Latn": (0x61, 0x7A),
    "ita_Latn": (0x61, 0x7A), "nld_Latn": (0x61, 0x7A), "pol_Latn": (0x61, 0x7A), "tur_Latn": (0x61, 0x7A),
    "vie_Latn": (0x61, 0x7A), "ind_Latn": (0x61, 0x7A), "swh_Latn": (0x61, 0x7A), "fin_Latn": (0x61, 0x7A),
    "rus_Cyrl": (0x430, 0x44F), "ukr_Cyrl": (0x430, 0x44F), "bul_Cyrl": (0x430, 0x44F), "ell_Grek": (0x3B1, 0x3C9),
    "arb_Arab": (0x628, 0x64A), "pes_Arab": (0x628, 0x64A), "hin_Deva": (0x915, 0x939), "mar_Deva": (0x915, 0x939),
    "kor_Hang": (0xAC00, 0xAC60), "tha_Thai": (0xE01, 0xE2E), "hye_Armn": (0x561, 0x586), "kat_Geor": (0x10D0, 0x10F0),
}  # fmt: skip
ENGLISH = "eng_Latn"
VOCAB = 4000
POOL = 4096  # sentences drawn per pair and reused with a running number (generation stays fast at 1e7 pairs)


def _words(rng: np.random.Generator, lo: int, hi: int, n: int) -> list[str]:
    lengths = rng.integers(2, 10, size=n)
    return ["".join(chr(c) for c in rng.integers(lo, hi + 1, size=k)) for k in lengths]


def _sentences(rng: np.random.Generator, vocab: list[str], lengths: np.ndarray) -> list[str]:
    ranks = np.minimum(rng.zipf(1.3, size=int(lengths.sum())), len(vocab)) - 1
    words = [vocab[i] for i in ranks]
    out, at = [], 0
    for k in lengths:
        out.append(" ".join(words[at : at + k]))
        at += k
    return out


def _pools(seed: int) -> dict[str, tuple[list[str], list[str]]]:
    """Per language pair: POOL source (English) and target sentences of lognormal lengths."""
    rng = np.random.default_rng(seed)
    english = _words(rng, 0x61, 0x7A, VOCAB)
    pools = {}
    for lang, (lo, hi) in SCRIPTS.items():
        src_len = np.clip(np.round(rng.lognormal(np.log(15), 0.55, POOL)), 1, 120).astype(int)
        trg_len = np.clip(np.round(src_len * rng.lognormal(0, 0.15, POOL)), 1, 120).astype(int)
        pools[lang] = (_sentences(rng, english, src_len), _sentences(rng, _words(rng, lo, hi, VOCAB), trg_len))
    return pools


def pair_shares() -> np.ndarray:
    """Share of the corpus of each language pair (Zipf over SCRIPTS order)."""
    weights = 1.0 / np.arange(1, len(SCRIPTS) + 1)
    return weights / weights.sum()


def write_corpus(folder: Path, n_pairs: int, pairs_per_file: int = 50_000, seed: int = 0) -> list[Path]:
    """`n_pairs` lines (plus the header of each file) in folder/part-NNNNN.tsv; -> the files."""
    folder.mkdir(parents=True, exist_ok=True)
    pools, langs = _pools(seed), list(SCRIPTS)
    rng = np.random.default_rng(seed + 1)
    which = rng.choice(len(langs), size=n_pairs, p=pair_shares())
    pick = rng.integers(0, POOL, size=n_pairs)
    kind = rng.random(n_pairs)  # < 0.01: repeat a recent line; < 0.012: broken
    files, recent = [], []
    for f, start in enumerate(range(0, n_pairs, pairs_per_file)):
        path = folder / f"part-{f:05d}.tsv"
        lines = ["src\ttrg\tsrc_lang\ttrg_lang\n"]
        for i in range(start, min(start + pairs_per_file, n_pairs)):
            if kind[i] < 0.01 and recent:
                lines.append(recent[i % len(recent)])
                continue
            if kind[i] < 0.012:
                lines.append(f"broken line {i}\n")
                continue
            lang = langs[which[i]]
            src, trg = pools[lang][0][pick[i]], pools[lang][1][pick[i]]
            line = f"{src} {i}\t{trg} {i}\t{ENGLISH}\t{lang}\n"
            lines.append(line)
            if i % 97 == 0:
                recent = [*recent[-63:], line]
        path.write_text("".join(lines), encoding="utf-8")
        files.append(path)
    return files
