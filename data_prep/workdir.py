"""Builds happen in a work directory beside `--out`; the old output is replaced only by a complete new one.

`OUT` is always either absent, the previous complete build, or the new complete build: a failure (bad
source, SIGKILL) during a rebuild leaves the previous output untouched. The new output grows in
`.OUT.work/build` (plan.py: the work directory's layout); the swap is two renames on one file system
(`OUT -> .OUT.old`, `.OUT.work/build -> OUT`); a crash between them is repaired by the next run (`settle`),
which also carries over entries of the old `OUT` that a build does not write (a user's notes).

A killed build's work directory is kept: a rerun under the same plan (same inputs and flags) resumes it, and the
engine runs only the tasks not marked complete (`open_work`). Under another plan it is removed first.
"""

from __future__ import annotations

import json
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


def plan_identity(work: Path) -> str | None:
    """The identity of the plan a work directory was started under (None: none, or unreadable)."""
    from .plan import Plan

    try:
        return Plan.from_json(json.loads((work / "plan.json").read_text())).identity()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_work(out: Path, plan_json: dict, identity: str) -> tuple[Path, bool]:
    """The work directory for this plan: resumed when it was started under the same plan, else fresh.
    -> (path, resumed)."""
    work = work_dir(out)
    if work.is_dir() and plan_identity(work) == identity and (work / "build").is_dir():
        return work, True
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tmp = work / ".plan.json.tmp"
    tmp.write_text(json.dumps(plan_json, sort_keys=True, default=str))
    (work / "build").mkdir()
    tmp.rename(work / "plan.json")  # last: a work directory without plan.json is never resumed
    return work, False


def commit(build: Path, out: Path) -> None:
    """Replace `out` by the complete build in `build`."""
    settle(out)
    if out.exists():
        out.rename(old_dir(out))
    build.rename(out)
    settle(out)


def abandon(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
