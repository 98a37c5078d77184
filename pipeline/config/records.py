"""Run records: what is written beside the checkpoints so a run is reproducible from its folder (STYLE.md #10)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config.schema import TrainConfig, to_dict


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


def write_run_files(cfg: TrainConfig, ds_config: dict, manifest_sha256: str, world_size: int) -> None:
    """OUTPUT/config.json (resolved config), ds_config.json (resolved DeepSpeed JSON), run_info.json (git SHA,
    data manifest sha256, world size): enough to reproduce the run from its folder (STYLE.md #10)."""
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "git_sha": git_sha(Path(__file__).resolve().parents[2]),
        "data": str(Path(cfg.data.path).resolve()),
        "manifest_sha256": manifest_sha256,
        "world_size": world_size,
    }
    for name, obj in (("config.json", to_dict(cfg)), ("ds_config.json", ds_config), ("run_info.json", info)):
        (out / name).write_text(json.dumps(obj, indent=2) + "\n")
