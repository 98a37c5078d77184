"""Every skipped record, one JSON line each in `skipped.jsonl` beside the manifest; the manifest keeps a summary.

A line: `{"where": "FILE:LINE", "reason": "...", "detail": "..."}` (`where` is `DIR row N` for `hf:` and `FILE row N`
for `parquet:` sources, `CATALOGUE#I` for gettext entries; `detail` only where there is one). The file has one line
per skipped record, so `wc -l skipped.jsonl == sum(manifest.counts.skipped)`: each read task writes the lines of
its records, each dedup task those of its duplicates, and the merge concatenates them (data_prep/stages/). Reasons
that point at a broken input (`WARNED`) are also logged, the first `MAX_WARNINGS` of each with their location.
"""

SKIPPED_FILE = "skipped.jsonl"
MAX_EXAMPLES = 5  # locations per reason in manifest.skip_examples (the full list is in skipped.jsonl)
MAX_WARNINGS = 5  # log lines per reason in WARNED
WARNED = frozenset({"invalid_utf8", "malformed", "extra_fields", "unknown_language"})
