"""The code map of docs/training.md, generated from the modules' own docstrings so that it cannot go stale.

    python -m pipeline.codemap                 # print the map (markdown)
    python -m pipeline.codemap --write-docs docs/training.md   # put it between the `<!-- codemap:begin ...` /
                                                               # `<!-- codemap:end -->` markers

One table per folder (runtime, kernels, data_prep, pipeline, eval, scripts, tests), one row per module: its path
and the first paragraph of its docstring (up to the first sentence end when that paragraph runs long). A module
without a docstring is an error (an empty `__init__.py` is left out); tests/test_codemap.py fails when the
committed map differs from the generated one.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "runtime": "processes, devices, collectives: what training and evaluation both stand on",
    "kernels": "Triton kernels beside their PyTorch references, and their benchmarks",
    "data_prep": "corpora -> prepared dataset (shards, tokenizer, manifest)",
    "pipeline": "training: config, data, model, the loop and its parts, export",
    "eval": "encoding, xsim / xsim++, mining, reports; the in-training evaluation hook",
    "scripts": "the demo, the ablation, sweeps and the GPU check, which drive the stages above",
    "tests": "mirrors the folders above",
}
OTHER = {"ds_configs/*.json": "DeepSpeed engine settings only: ZeRO-2 fp32 for CPUs, bf16 for GPUs, bf16 with offload"}
BEGIN, END = "<!-- codemap:begin", "<!-- codemap:end -->"
LONG = 200  # a first paragraph longer than this is cut at its first sentence end


def summary(path: Path, root: Path = ROOT) -> str | None:
    """The first paragraph of the module's docstring on one line; None for an empty `__init__.py`."""
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path)))
    if not doc:
        if path.name == "__init__.py" and not path.read_text().strip():
            return None
        raise ValueError(f"{path.relative_to(root).as_posix()}: no module docstring (the code map is made of them)")
    text = " ".join(doc.split("\n\n")[0].split())
    if len(text) > LONG:
        m = re.search(r"(?<=\.)\s", text[40:])
        text = text[: 40 + m.start()] if m else text
    return text.replace("|", "\\|").replace("<", "&lt;")  # a table cell; no stray HTML comment markers


def codemap(root: Path = ROOT) -> str:
    """Markdown tables, one per folder."""
    out = []
    for folder, role in FOLDERS.items():
        rows = []
        for path in sorted((root / folder).rglob("*.py")):
            text = summary(path, root)
            if text is not None:
                rows.append(f"| `{path.relative_to(root).as_posix()}` | {text} |")
        out += [f"**`{folder}/`**: {role}.", "", "| module | what it is |", "| --- | --- |", *rows, ""]
    out += ["| other | what it is |", "| --- | --- |", *(f"| `{k}` | {v} |" for k, v in OTHER.items()), ""]
    return "\n".join(out)


def with_map(text: str, root: Path = ROOT) -> str:
    """`text` with the generated map between its markers (ValueError when the markers are missing)."""
    m = re.search(re.escape(BEGIN) + r"[^\n]*\n.*?" + re.escape(END), text, flags=re.S)
    if m is None:
        raise ValueError(f"no {BEGIN} ... {END} markers")
    head = text[m.start() : text.index("\n", m.start()) + 1]
    return text[: m.start()] + head + codemap(root) + END + text[m.end() :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.codemap", description="print or write the code map")
    parser.add_argument("--write-docs", type=Path, metavar="FILE", help="replace the map between FILE's markers")
    args = parser.parse_args(argv)
    if args.write_docs is None:
        sys.stdout.write(codemap())
        return 0
    args.write_docs.write_text(with_map(args.write_docs.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
