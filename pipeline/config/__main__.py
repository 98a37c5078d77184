"""`python -m pipeline.config --markdown` prints the flag table; `--write-docs FILE` puts it between FILE's
`<!-- flags:begin ... -->` / `<!-- flags:end -->` markers (docs/training.md), so the docs are generated, not copied."""

import re
import sys
from pathlib import Path

from pipeline.config.cli import build_parser, flag_table

BEGIN, END = "<!-- flags:begin", "<!-- flags:end -->"


def with_table(text: str) -> str:
    """`text` with the generated table between its markers (ValueError when the markers are missing)."""
    m = re.search(re.escape(BEGIN) + r"[^\n]*\n.*?" + re.escape(END), text, flags=re.S)
    if m is None:
        raise ValueError(f"no {BEGIN} ... {END} markers")
    head = text[m.start() : text.index("\n", m.start()) + 1]
    return text[: m.start()] + head + flag_table() + END + text[m.end() :]


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(flag_table())
    elif len(sys.argv) == 3 and sys.argv[1] == "--write-docs":
        path = Path(sys.argv[2])
        path.write_text(with_table(path.read_text()))
    else:
        build_parser().print_help()
