"""Which columns hold a pair: the column mapping of `--src-col/--trg-col/--src-lang-col/--trg-lang-col`, the fixed
`--src-lang/--trg-lang`, and the layout of the public parallel releases (NLLB, OPUS-derived sets on the hub):

    {"translation": {"eng_Latn": "...", "fra_Latn": "..."}, "laser_score": 1.21, ...}

A `translation` column (a struct or an object of two languages) is used when the source column is absent. Its two
keys are the languages: the one equal to `--src-lang` is the source, otherwise the first key. `--min-score S` keeps
pairs whose score column (`--score-col`, by default `laser_score` or `score`, whichever exists) is at least S;
the others are skipped as `low_score` with their score in `skipped.jsonl`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .records import MALFORMED, UNKNOWN_LANG, Pair, Record, Skip, SourceError

TRANSLATION = "translation"
LOW_SCORE = "low_score"
SCORE_COLUMNS = ("laser_score", "score")


@dataclass(frozen=True)
class Layout:
    """Column names and defaults shared by the column formats (tsv, csv, jsonl, hf, parquet)."""

    src: str = "src"
    """Column of the source text (--src-col)."""
    trg: str = "trg"
    """Column of the target text (--trg-col)."""
    src_lang: str = "src_lang"
    """Column of the source language, optional in the data (--src-lang-col)."""
    trg_lang: str = "trg_lang"
    """Column of the target language, optional in the data (--trg-lang-col)."""
    langs: tuple[str, str] = (UNKNOWN_LANG, UNKNOWN_LANG)
    """Languages where the data names none (--src-lang, --trg-lang)."""
    score: str = ""
    """Alignment score column (--score-col; empty: `laser_score` or `score` when present)."""
    min_score: float | None = None
    """Keep pairs scoring at least this (--min-score); None keeps all."""

    @classmethod
    def of(cls, langs_or_layout: tuple[str, str] | Layout) -> Layout:
        return langs_or_layout if isinstance(langs_or_layout, Layout) else cls(langs=tuple(langs_or_layout))

    def score_column(self, names: list[str], where: str) -> str:
        """The score column among `names` ("" when none is needed); SourceError when --min-score has none."""
        score = self.score or next((c for c in SCORE_COLUMNS if c in names), "")
        if self.score and self.score not in names:
            raise SourceError(f"{where}: no score column {self.score!r} (--score-col); columns {names}")
        if self.min_score is not None and not score:
            names_it = " or ".join(SCORE_COLUMNS)
            raise SourceError(f"{where}: --min-score needs a score column ({names_it}, or --score-col)")
        return score

    def low_score(self, score, where: str) -> Skip | None:
        """`low_score` when --min-score is set and the score is missing, not a number, or below it."""
        if self.min_score is None:
            return None
        if isinstance(score, str):
            try:
                score = float(score)
            except ValueError:
                pass
        if not isinstance(score, (int, float)) or isinstance(score, bool) or math.isnan(score):
            return Skip(LOW_SCORE, where, f"no score ({score!r})")
        return Skip(LOW_SCORE, where, f"score {score} < {self.min_score}") if score < self.min_score else None

    def columns(self) -> tuple[str, str, str, str]:
        return self.src, self.trg, self.src_lang, self.trg_lang

    def object_record(self, obj: object, where: str) -> Record:
        """A JSON object (a jsonl line) -> Pair or Skip; a line lacking the columns is `malformed`."""
        if not isinstance(obj, dict):
            return Skip(MALFORMED, where, f"expected an object, got {type(obj).__name__}")
        translation = self.src not in obj and TRANSLATION in obj
        score = self.score or next((c for c in SCORE_COLUMNS if c in obj), "")
        return Resolved(self, translation, score, (self.src_lang, self.trg_lang)).record(obj, where)

    def resolve(self, names: list[str], where: str) -> Resolved:
        """The columns of a table/file with these column names; SourceError naming `where` and the flag."""
        score = self.score or next((c for c in SCORE_COLUMNS if c in names), "")
        if self.score and self.score not in names:
            raise SourceError(f"{where}: no score column {self.score!r} (--score-col); columns {names}")
        if self.min_score is not None and not score:
            raise SourceError(
                f"{where}: --min-score needs a score column ({' or '.join(SCORE_COLUMNS)}, or --score-col)"
            )
        if self.src in names and self.trg in names:
            langs = tuple(c if c in names else "" for c in (self.src_lang, self.trg_lang))
            return Resolved(self, False, score, langs)
        if TRANSLATION in names:
            return Resolved(self, True, score, ("", ""))
        missing = [c for c in (self.src, self.trg) if c not in names]
        raise SourceError(
            f"{where}: columns {names} lack {missing} (--src-col/--trg-col) and have no {TRANSLATION!r} column"
        )


@dataclass(frozen=True)
class Resolved:
    """A layout bound to one file's columns: `record(obj, where)` turns a row (a dict) into a Pair or a Skip."""

    layout: Layout
    translation: bool
    score: str
    lang_columns: tuple[str, str]

    def needed(self) -> list[str]:
        cols = [TRANSLATION] if self.translation else [self.layout.src, self.layout.trg]
        return cols + [c for c in (*self.lang_columns, self.score) if c]

    def record(self, obj: dict, where: str) -> Record:
        if self.translation:
            rec = translation_pair(obj.get(TRANSLATION), self.layout.langs[0], where)
        else:
            rec = self._columns_pair(obj, where)
        if isinstance(rec, Skip):
            return rec  # malformed before low_score
        low = self.layout.low_score(obj.get(self.score) if self.score else None, where)
        return rec if low is None else low

    def _columns_pair(self, obj: dict, where: str) -> Record:
        lay = self.layout
        src, trg = obj.get(lay.src), obj.get(lay.trg)
        langs = [obj.get(c) if c else None for c in self.lang_columns]
        bad = [c for c, v in ((lay.src, src), (lay.trg, trg)) if not isinstance(v, str)]
        bad += [c for c, v in zip(self.lang_columns, langs) if v is not None and not isinstance(v, str)]
        if bad:
            return Skip(MALFORMED, where, f"missing or non-string field(s) {bad}")
        return Pair(src, trg, langs[0] or lay.langs[0], langs[1] or lay.langs[1], where)


def translation_pair(translation, src_lang: str, where: str) -> Record:
    """`{lang: text}` of two languages -> a Pair (the key equal to `src_lang` first, else the first key)."""
    if not isinstance(translation, dict) or len(translation) != 2:
        return Skip(MALFORMED, where, f"{TRANSLATION!r} is not an object of two languages")
    (a, text_a), (b, text_b) = translation.items()
    if b == src_lang:
        (a, text_a), (b, text_b) = (b, text_b), (a, text_a)
    if not isinstance(text_a, str) or not isinstance(text_b, str):
        return Skip(MALFORMED, where, f"{TRANSLATION!r} texts must be strings")
    return Pair(text_a, text_b, a, b, where)
