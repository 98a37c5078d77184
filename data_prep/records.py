"""The two things a reader yields: a `Pair` to clean and keep, or a `Skip` that is counted by reason.

Every input record becomes exactly one of them, so `counts.read == counts.kept + sum(counts.skipped)`
holds by construction (a malformed line is never lost silently).
"""

from __future__ import annotations

from typing import NamedTuple


class Pair(NamedTuple):
    """One translation pair as read; `where` is `file:line` (or `dir row N`) for error messages."""

    src: str
    trg: str
    src_lang: str
    trg_lang: str
    where: str


class Skip(NamedTuple):
    """A record dropped by a reader; `reason` is a key of `manifest.counts.skipped`."""

    reason: str
    where: str
    detail: str = ""


Record = Pair | Skip
UNKNOWN_LANG = "und_Zzzz"  # ISO 639 "undetermined" + ISO 15924 "unknown script"


class SourceError(ValueError):
    """An input that cannot be read at all (the message names the file and the flag)."""


# Skip reasons used by readers (the cleaner adds its own, see clean.py).
MALFORMED = "malformed"
INVALID_UTF8 = "invalid_utf8"
UNTRANSLATED = "untranslated"
FUZZY = "fuzzy"
OBSOLETE = "obsolete"
UNKNOWN_LOCALE = "unknown_locale"
EXTRA_FIELDS = "extra_fields"
