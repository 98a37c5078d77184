"""Pair cleaning: Unicode NFC, whitespace trim, and one counted reason for every dropped pair.

Checks, in this order (the first that fails names the reason in `manifest.counts.skipped`):
`unknown_language` (a language that is neither a FLORES code `xxx_Yyyy` nor a locale `langcodes.to_flores`
maps, e.g. text shifted into a language column by a stray tab), `same_language` (src_lang == trg_lang other
than `und_Zzzz`: a paraphrase, not a translation; MEXMA aligns languages), `empty` (a side empty or
whitespace only), `invalid_utf8` (lone surrogates, e.g. from JSON escapes),
`control_chars` (C0/C1 controls other than tab, newline, carriage return), `too_long` (a side over
`max_chars` characters after NFC), `identical` (src == trg), `length_ratio` (longer / shorter side in
characters over `max_ratio`), `test_overlap` (a side whose `overlap_key` is in the held-out keys).
Exact duplicate pairs are dropped later, over the whole corpus (`duplicate`, see stages/dedup.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from .langcodes import to_flores
from .readers import UNKNOWN_LANG
from .records import INVALID_UTF8, Pair

EMPTY = "empty"
CONTROL = "control_chars"
TOO_LONG = "too_long"
IDENTICAL = "identical"
RATIO = "length_ratio"
TEST_OVERLAP = "test_overlap"
DUPLICATE = "duplicate"
UNKNOWN_LANGUAGE = "unknown_language"
SAME_LANGUAGE = "same_language"

_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_BAD_CHAR_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_ACCEL_RE = re.compile(r"[_&](?=\w)")  # gettext/Qt menu accelerators: "_Open", "&Save"
_NON_WORD_RE = re.compile(r"[\W_]+")
_flores = lru_cache(maxsize=4096)(to_flores)  # a corpus has few distinct codes: one regex per code, not per pair


def overlap_key(text: str) -> str:
    """Loose identity of a sentence for test-set decontamination.

    NFKC, accelerators removed, case folded, punctuation and whitespace runs collapsed to one space:
    "_Could not open the file." and "could not open the file" share a key.
    """
    text = _ACCEL_RE.sub("", unicodedata.normalize("NFKC", text))
    return _NON_WORD_RE.sub(" ", text.casefold()).strip()


@dataclass
class Cleaner:
    """Applies the checks above; `check` returns the cleaned pair or the reason it was dropped."""

    max_chars: int = 1000
    max_ratio: float = 6.0
    held_out: frozenset[str] = frozenset()

    def check(self, pair: Pair) -> Pair | str:
        """The cleaned pair (NFC, stripped, languages as FLORES codes) or the reason it is dropped."""
        src_lang, trg_lang = _flores(pair.src_lang), _flores(pair.trg_lang)
        if src_lang is None or trg_lang is None:
            return UNKNOWN_LANGUAGE
        if src_lang == trg_lang and src_lang != UNKNOWN_LANG:
            return SAME_LANGUAGE
        src = unicodedata.normalize("NFC", pair.src).strip()
        trg = unicodedata.normalize("NFC", pair.trg).strip()
        return self._reason(src, trg) or pair._replace(src=src, trg=trg, src_lang=src_lang, trg_lang=trg_lang)

    def _reason(self, src: str, trg: str) -> str | None:
        if not src or not trg:
            return EMPTY
        if _BAD_CHAR_RE.search(src) or _BAD_CHAR_RE.search(trg):  # rare: one regex for both checks first
            return INVALID_UTF8 if _SURROGATE_RE.search(src + trg) else CONTROL
        short, long = sorted((len(src), len(trg)))
        if long > self.max_chars:
            return TOO_LONG
        if src == trg:
            return IDENTICAL
        if long / short > self.max_ratio:
            return RATIO
        if self.held_out and (overlap_key(src) in self.held_out or overlap_key(trg) in self.held_out):
            return TEST_OVERLAP
        return None
