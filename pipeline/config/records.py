"""Run records: what is written beside the checkpoints so a run is reproducible from its folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def git_sha(repo: str | Path = ".") -> str:
    """HEAD of the code's repository (+ "-dirty" with uncommitted changes), or "unknown" outside git."""
    import subprocess

    def run(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode:
            return "unknown"
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_files(record: dict, ds_config: dict, output_dir: str | Path, tokenizer: str | Path | None = None) -> None:
    """OUTPUT/config.json (the resolved config of `record`, with the schedule's real --max-steps), ds_config.json
    (resolved DeepSpeed JSON), run_info.json (git SHA, data path, manifest sha256, world size, max_steps) and
    tokenizer/ (a copy of the data's): enough to reproduce the run from its folder.

    Called by rank 0 only after the relaunch checks passed (pipeline/training/runrecord.py). Each file is replaced
    atomically (tmp + os.replace); the tokenizer is copied to a temporary directory and swapped in, so a reader (export)
    sees the old or the new one, never a mix."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "git_sha": git_sha(Path(__file__).resolve().parents[2]),
        "data": record["data"],
        "manifest_sha256": record["manifest_sha256"],
        "world_size": record["world_size"],
        "max_steps": record["max_steps"],
    }
    config = {**record["config"], "resolved": record.get("resolved", {})}  # measured at start-up; --config skips it
    for name, obj in (("config.json", config), ("ds_config.json", ds_config), ("run_info.json", info)):
        tmp = out / f".{name}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, out / name)
    if tokenizer is not None and Path(tokenizer).is_dir():
        _swap_in_copy(Path(tokenizer), out / "tokenizer")


def _swap_in_copy(src: Path, dst: Path) -> None:
    """dst becomes a copy of src: copy to a sibling temp dir, then two renames (the old one is removed after)."""
    tmp, old = dst.with_name(f".{dst.name}.tmp{os.getpid()}"), dst.with_name(f".{dst.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)
