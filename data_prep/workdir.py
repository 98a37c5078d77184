"""Builds happen in a work directory beside `--out`; the old output is replaced only by a complete new one.

`OUT` is always either absent, the previous complete build, or the new complete build: a failure (bad
source, SIGKILL) during a rebuild leaves the previous output untouched. The swap is two renames on one
file system (`OUT -> .OUT.old`, `.OUT.work -> OUT`); a crash between them is repaired by the next run
(`settle`), which also carries over entries of the old `OUT` that a build does not write (a user's notes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

# What a build owns in OUT, or what is derived from it (`sampling/`: data_prep/lengths.py, built from the rows on
# first use): dropped with the old output, never carried into the new one, where it would be stale.
BUILT = ("train", "valid", "tokenizer", "manifest.json", "skipped.jsonl", ".work", "sampling")


def work_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.work")


def old_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def settle(out: Path) -> None:
    """Finish an interrupted swap: restore `.OUT.old` if `OUT` is missing, else move its foreign entries and drop it."""
    old = old_dir(out)
    if not old.exists():
        return
    if not out.exists():
        old.rename(out)
        return
    for entry in old.iterdir():
        if entry.name not in BUILT and not (out / entry.name).exists():
            entry.rename(out / entry.name)
    shutil.rmtree(old)


def check_replaceable(out: Path) -> None:
    """Refuse to replace a non-empty folder that is not a prepared directory (names `--out`)."""
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists() and not (out / ".work").exists():
        raise FileExistsError(f"--out {out}: exists, is not empty and has no manifest.json; refusing to overwrite")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a directory")


def start(out: Path) -> Path:
    """A fresh, empty work directory (a killed build's leftovers are removed)."""
    work = work_dir(out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def commit(work: Path, out: Path) -> None:
    """Replace `out` by the complete build in `work`."""
    settle(out)
    if out.exists():
        out.rename(old_dir(out))
    work.rename(out)
    settle(out)


def abandon(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
