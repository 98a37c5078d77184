"""Pair cleaning: Unicode NFC, whitespace trim, and one counted reason for every dropped pair.

Checks, in this order (the first that fails names the reason in `manifest.counts.skipped`):
`empty` (a side empty or whitespace only), `invalid_utf8` (lone surrogates, e.g. from JSON escapes),
`control_chars` (C0/C1 controls other than tab, newline, carriage return), `too_long` (a side over
`max_chars` characters after NFC), `identical` (src == trg), `length_ratio` (longer / shorter side in
characters over `max_ratio`), `test_overlap` (a side whose `overlap_key` is in the held-out keys).
Exact duplicate pairs are dropped later, over the whole corpus (`duplicate`, see spool.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from .records import INVALID_UTF8, Pair

EMPTY = "empty"
CONTROL = "control_chars"
TOO_LONG = "too_long"
IDENTICAL = "identical"
RATIO = "length_ratio"
TEST_OVERLAP = "test_overlap"
DUPLICATE = "duplicate"

_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_BAD_CHAR_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_ACCEL_RE = re.compile(r"[_&](?=\w)")  # gettext/Qt menu accelerators: "_Open", "&Save"
_NON_WORD_RE = re.compile(r"[\W_]+")


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
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def check(self, pair: Pair) -> Pair | str:
        src = unicodedata.normalize("NFC", pair.src).strip()
        trg = unicodedata.normalize("NFC", pair.trg).strip()
        reason = self._reason(src, trg)
        if reason:
            self.note(reason, pair.where)
            return reason
        return pair._replace(src=src, trg=trg)

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

    def note(self, reason: str, where: str) -> None:
        """Keep the first `max_examples` locations of each reason for the manifest."""
        seen = self.examples.setdefault(reason, [])
        if len(seen) < self.max_examples:
            seen.append(where)
