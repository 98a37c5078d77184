"""RFC 4180 CSV records with every physical line accounted for.

`csv.reader` over a whole file lets one unmatched quote swallow the rest of the file into a single
field. Here the record boundaries are found first, line by line, with the same state machine as the
standard library's reader (default dialect: `,`, `"`, doubled quotes, lenient about text after a
closing quote); each complete record then goes to `csv.reader`. A quoted field may span lines, but a
quote still open at the end of the file, or after `MAX_RECORD_LINES` lines or `MAX_RECORD_BYTES`
bytes, is one `malformed` record reported at the line where that quote opened, and reading resumes on
the line after it.
"""

from __future__ import annotations

import csv
import re
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from .records import INVALID_UTF8, MALFORMED, Skip, SourceError
from .textio import raw_lines

MAX_RECORD_LINES = 100
"""A quoted field may span at most this many physical lines (sentences are one line; 100 allows paragraphs)."""
MAX_RECORD_BYTES = 1 << 20
"""... and at most this many bytes (1 MiB, far above `--max-chars`; bounds the memory of a runaway quote)."""

_QUOTE_OR_COMMA = re.compile(r'[",]')
_START, _UNQUOTED, _QUOTED, _CLOSED = range(4)  # field start, unquoted text, inside quotes, just after a quote


def ends_in_quote(line: str, in_quote: bool) -> tuple[bool, bool]:
    """(line ends inside a quoted field, that quote opened on this line) for `line` without its newline.

    `in_quote`: the line starts inside a quoted field opened on an earlier line. A quote opens a field only as
    its first character; elsewhere it is text (as in `csv.reader` with `strict=False`).
    """
    state, start, opened_here = (_QUOTED if in_quote else _START), 0, False
    for m in _QUOTE_OR_COMMA.finditer(line):
        pos, quote = m.start(), m.group() == '"'
        if state == _QUOTED:
            if quote:
                state, start = _CLOSED, pos
        elif state == _CLOSED:
            if quote and pos == start + 1:
                state = _QUOTED  # "" inside quotes: a literal quote
            else:
                state, start = (_UNQUOTED, start) if quote else (_START, pos + 1)
        elif state == _START:
            if quote and pos == start:
                state, opened_here = _QUOTED, True
            elif quote:
                state = _UNQUOTED
            else:
                start = pos + 1
        elif not quote:
            state, start = _START, pos + 1
    return state == _QUOTED, opened_here and state == _QUOTED


_Line = tuple[int, str, int, bool]  # (line number, text with its end, bytes, had undecodable bytes)


def _decode(lineno: int, raw: bytes) -> _Line:
    try:
        return lineno, raw.decode("utf-8"), len(raw), False
    except UnicodeDecodeError:  # kept as surrogates so the quote state still advances; the record is skipped
        return lineno, raw.decode("utf-8", "surrogateescape"), len(raw), True


class _Lines:
    """Decoded lines of a file, with a push-back queue to resume after a bad record."""

    def __init__(self, path: Path):
        self._it = (_decode(n, raw) for n, raw in raw_lines(path, keep_ends=True))
        self.back: deque[_Line] = deque()

    def __iter__(self):
        return self

    def __next__(self) -> _Line:
        return self.back.popleft() if self.back else next(self._it)


def records(path: Path) -> Iterator[tuple[str, list[str]] | Skip]:
    """(`file:line` of the record's first line, its fields) per record, or a `Skip` for an unreadable one.

    The header is the first record. Every physical line belongs to exactly one record or skip.
    """
    csv.field_size_limit(sys.maxsize)
    lines = _Lines(path)
    while True:
        record: list[_Line] = []
        opened, size = 0, 0
        for line in lines:
            lineno, text, nbytes, bad = line
            if not record and '"' not in text and not bad and "\r" not in (body := text.rstrip("\r\n")) and body:
                yield f"{path}:{lineno}", body.split(",")  # no quote: what csv.reader gives, 3x faster
                continue
            record.append(line)
            size += nbytes
            still_open, here = ends_in_quote(text.rstrip("\r\n"), len(record) > 1)
            opened = lineno if here else opened
            if not still_open:
                yield _parse(path, record)
                record, size = [], 0
            elif len(record) >= MAX_RECORD_LINES or size > MAX_RECORD_BYTES:
                yield _unclosed(path, record, opened, f"still open after {len(record)} lines / {size} bytes")
                lines.back.extendleft(reversed([r for r in record if r[0] > opened]))
                record, size = [], 0
        if not record:
            return
        yield _unclosed(path, record, opened, "never closed before the end of the file")
        lines.back.extendleft(reversed([r for r in record if r[0] > opened]))


def _unclosed(path: Path, record: list[_Line], opened: int, why: str) -> Skip:
    first = f" (record from line {record[0][0]})" if record[0][0] != opened else ""
    return Skip(MALFORMED, f"{path}:{opened}", f"quote opened on this line{first} is {why}; reading resumes after it")


def _parse(path: Path, record: list[_Line]) -> tuple[str, list[str]] | Skip:
    where = f"{path}:{record[0][0]}"
    if any(bad for *_, bad in record):
        return Skip(INVALID_UTF8, where, "undecodable bytes")
    try:
        rows = list(csv.reader([text for _, text, _, _ in record]))
    except csv.Error as e:
        return Skip(MALFORMED, where, str(e))
    if len(rows) != 1:
        return Skip(MALFORMED, where, "blank line" if not rows or not rows[0] else f"{len(rows)} records in one")
    return where, rows[0]


def csv_rows(path: Path) -> tuple[list[str], Iterator[tuple[str, list[str]] | Skip]]:
    """(header fields, the remaining records) of a CSV file; raises `SourceError` for an unusable header."""
    it = records(path)
    first = next(it, None)
    if first is None:
        raise SourceError(f"{path}: empty file, expected a header line with src and trg")
    if isinstance(first, Skip):
        raise SourceError(f"{path}:1: unreadable header ({first.reason}: {first.detail})")
    return first[1], it
