"""Every skipped record, one JSON line each in `skipped.jsonl` beside the manifest; the manifest keeps a summary.

A line: `{"where": "FILE:LINE", "reason": "...", "detail": "..."}` (`where` is `DIR row N` for `hf:` sources
and `CATALOGUE#I` for gettext entries; `detail` only where there is one). The file has one line per skipped
record, so `wc -l skipped.jsonl == sum(manifest.counts.skipped)`. Reader-level reasons that point at a
broken input (`_WARNED`) are also logged, the first `MAX_WARNINGS` of each with their location.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

log = logging.getLogger("data_prep")
SKIPPED_FILE = "skipped.jsonl"
MAX_EXAMPLES = 5  # locations per reason in manifest.skip_examples (the full list is in skipped.jsonl)
MAX_WARNINGS = 5  # log lines per reason in _WARNED
_WARNED = {"invalid_utf8", "malformed", "extra_fields", "unknown_language"}


class SkipLog:
    """Appends skipped records to `path` and keeps counts and the first locations per reason."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "w", encoding="utf-8")
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, where: str, detail: str = "") -> None:
        seen = self.counts[reason]
        self.counts[reason] = seen + 1
        entry = {"where": where, "reason": reason, "detail": detail} if detail else {"where": where, "reason": reason}
        self._file.write(json.dumps(entry) + "\n")  # ASCII escapes: lone surrogates from bad bytes stay writable
        if seen < MAX_EXAMPLES:
            self.examples.setdefault(reason, []).append(where)
        if reason in _WARNED and seen < MAX_WARNINGS:
            log.warning("skipped %s: %s %s", where, reason, detail)

    def close(self) -> None:
        self._file.close()
        for reason in sorted(_WARNED):
            if self.counts[reason] > MAX_WARNINGS:
                log.warning("%d more %s records: see %s", self.counts[reason] - MAX_WARNINGS, reason, SKIPPED_FILE)

    def summary(self) -> dict[str, list[str]]:
        return {k: self.examples[k] for k in sorted(self.examples)}
