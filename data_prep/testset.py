"""A held-out multi-way test set from gettext catalogues, written in the FLORES-200 layout.

Which messages: English msgids that read as real sentences, so that retrieval between languages is
meaningful (`is_sentence`): 4 to 40 words and 20 to 250 characters, starting with a capital letter,
at least 70% letters and spaces, and none of what marks UI strings or code rather than prose: format
directives and placeholders (`%s`, `{0}`, `$VAR`), markup (`<b>`), accelerators (`_Open`, `&Save`),
escapes, `--options`, URLs, `|`, `@`, line breaks, CamelCase identifiers (`GtkActionGroup`).
Translations must be one line, differ from the msgid and pass the training cleaner.

Which languages: every msgid must be translated in every chosen language (line i is the same message
in all files). Greedily add the language that keeps the most msgids, while at least `size` msgids
remain or fewer than `min_langs` languages are chosen. Per language the most frequent translation over
catalogues wins (ties: the smallest string); msgids whose translation collides with another's in some
language, or whose `overlap_key` repeats, are dropped, so every line is a distinct retrieval target.

Order: by blake2b of the msgid (mixes packages); the first `devtest_size` go to devtest, the next
`dev_size` to dev.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .clean import Cleaner, overlap_key
from .gettext_reader import gettext_records
from .langcodes import ENGLISH
from .records import Pair

_NOT_PROSE = re.compile(r"[%{}$<>_&\\@`|\n\t\r]|--|https?:|www\.|[a-z][A-Z]")


def is_sentence(text: str) -> bool:
    """True for an English msgid that reads as a sentence (rules in the module docstring)."""
    words = text.split()
    if not (4 <= len(words) <= 40 and 20 <= len(text) <= 250) or not text[0].isupper():
        return False
    if _NOT_PROSE.search(text):
        return False
    return sum(ch.isalpha() or ch == " " for ch in text) >= 0.7 * len(text)


@dataclass
class TestSet:
    """Chosen languages and msgids; `lines[lang][i]` is message i in that language (English included)."""

    langs: list[str]
    msgids: list[str]
    lines: dict[str, list[str]]


def collect(roots: list[Path], domains: tuple[str, ...] = ()) -> dict[str, dict[str, Counter]]:
    """msgid -> lang -> Counter of translations, for sentence msgids only (one pass over the catalogues)."""
    cleaner = Cleaner()
    table: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for root in roots:
        for rec in gettext_records(root, domains):
            if not isinstance(rec, Pair) or not is_sentence(rec.src):
                continue
            clean = cleaner.check(rec)
            if isinstance(clean, Pair) and "\n" not in clean.trg and clean.src == rec.src:
                table[clean.src][clean.trg_lang][clean.trg] += 1
    return table


def select(table: dict[str, dict[str, Counter]], size: int, min_langs: int) -> TestSet:
    """Greedy language choice and per-language translation choice (see the module docstring)."""
    covered: dict[str, set[str]] = defaultdict(set)
    for msgid, by_lang in table.items():
        for lang in by_lang:
            covered[lang].add(msgid)
    keep, langs = set(table), []
    while covered:
        best = max(sorted(covered), key=lambda lang: len(keep & covered[lang]))
        if len(keep & covered[best]) < size and len(langs) >= min_langs:
            break
        keep &= covered.pop(best)
        langs.append(best)
    msgids = sorted(keep, key=_order)
    lines = {lang: [_pick(table[m][lang]) for m in msgids] for lang in langs}
    msgids = _distinct(msgids, lines)
    lines = {lang: [_pick(table[m][lang]) for m in msgids] for lang in sorted(langs)}
    return TestSet(sorted(langs), msgids, {ENGLISH: list(msgids), **lines})


def _order(msgid: str) -> bytes:
    return hashlib.blake2b(msgid.encode(), digest_size=8).digest()


def _pick(translations: Counter) -> str:
    return min(translations.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _distinct(msgids: list[str], lines: dict[str, list[str]]) -> list[str]:
    """Drop msgids whose overlap key, or translation in any language, repeats an earlier one's."""
    seen: dict[str, set[str]] = defaultdict(set)
    kept = []
    for i, msgid in enumerate(msgids):
        keys = {ENGLISH: overlap_key(msgid), **{lang: overlap_key(lines[lang][i]) for lang in lines}}
        if any(key in seen[lang] for lang, key in keys.items()):
            continue
        for lang, key in keys.items():
            seen[lang].add(key)
        kept.append(msgid)
    return kept


def write_flores(test: TestSet, out: Path, devtest_size: int, dev_size: int) -> dict[str, int]:
    """Write `out/{dev,devtest}/{lang}.{split}`; returns rows per split."""
    n_test = min(devtest_size, len(test.msgids))
    ranges = {"devtest": (0, n_test), "dev": (n_test, min(n_test + dev_size, len(test.msgids)))}
    for split, (lo, hi) in ranges.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        for lang, lines in test.lines.items():
            (out / split / f"{lang}.{split}").write_text("".join(f"{line}\n" for line in lines[lo:hi]), "utf-8")
    return {split: hi - lo for split, (lo, hi) in ranges.items()}
