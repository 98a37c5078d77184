"""What the demo, the ablation and the sweep share: training commands from a recipe (recipes/*.json, train.py
--recipe) and overrides, stages run as subprocesses with their output on the terminal and in a log, the untrained
model as an HF directory, export and evaluation.

Every stage is a command a user could type (printed before it runs); a stage that fails stops the script with the
stage's name, its exit status and the log that holds its output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


class StageError(RuntimeError):
    """A stage's command failed; the message names the stage, its exit status and its log."""


def recipe_flags(recipe: dict) -> list[str]:
    """{"lr": 1e-4, "koleo-global": True} -> ["--lr", "0.0001", "--koleo-global"] (train.py flag names)."""
    flags: list[str] = []
    for key, value in recipe.items():
        if isinstance(value, bool):
            flags.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, list):
            flags += [f"--{key}", *map(str, value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def recipe_settings(recipe: str, overrides: dict | None = None) -> dict:
    """The flags a run trains with: the recipe file's, then `overrides` (what a stamp, a log record or a report's
    settings table shows)."""
    from pipeline.config.recipes import read_recipe

    return {**read_recipe(recipe), **(overrides or {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_env(threads: int | None = None) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"),
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE=os.environ.get("WANDB_MODE", "offline"),
    )
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_stage(name: str, cmd: list[str], log_path: Path, threads: int | None = None, echo: bool = True) -> float:
    """Run cmd from the repository root, its output to the terminal (if echo) and to log_path; -> seconds."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n==> [{name}] {' '.join(cmd)}\n    (log: {log_path})", flush=True)
    start = time.perf_counter()
    with open(log_path, "w", buffering=1) as log:  # line-buffered: `tail -f` shows progress
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=stage_env(threads),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for line in proc.stdout:
            log.write(line)
            if echo and not _noise(line):
                print(f"    {line.rstrip()}", flush=True)
        rc = proc.wait()
    seconds = time.perf_counter() - start
    if rc != 0:
        raise StageError(f"stage {name!r} failed (exit {rc}) after {seconds:.0f} s; its output is in {log_path}")
    print(f"<== [{name}] done in {seconds:.0f} s", flush=True)
    return seconds


def _noise(line: str) -> bool:
    """Launcher chatter that hides the progress lines (DeepSpeed's per-rank start-up banners)."""
    return any(
        s in line
        for s in (
            "[real_accelerator.py",
            "[launch.py",
            "[runner.py",
            "cpu_adam",
            "[comm.py",
            "Setting ds_accelerator",
            "[config_utils.py",
            "UserWarning",
            "warnings.warn",
        )
    )


def train_cmd(
    data: str,
    out: Path,
    recipe: str,
    overrides: dict | None = None,
    *,
    steps: int,
    minutes: float,
    seed: int = 0,
    procs: int = 2,
    pairs_per_step: int | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """`deepspeed --num_gpus procs pipeline/train.py --recipe RECIPE ...` (ZeRO-2 on CPU): the recipe's flags, then
    `overrides` and these arguments over them; pairs_per_step (default: the recipe's batch) split over the ranks."""
    batch = []
    if pairs_per_step is not None:
        if pairs_per_step % procs:
            raise ValueError(f"pairs per step {pairs_per_step} is not divisible by {procs} processes")
        batch = ["--batch-pairs", str(pairs_per_step // procs), "--grad-accum", "1"]
    args = [
        "--recipe",
        recipe,
        "--data",
        data,
        "--output-dir",
        str(out),
        *batch,
        "--max-steps",
        str(steps),
        "--max-minutes",
        str(minutes),
        "--save-every",
        "0",
        "--seed",
        str(seed),
        "--log-every",
        "10",
        "--valid-every",
        "-1",
        *recipe_flags(overrides or {}),
        *(extra or []),
    ]
    if procs == 1:
        return [PY, "pipeline/train.py", *args]
    return [DEEPSPEED, "--num_gpus", str(procs), "--master_port", str(free_port()), "pipeline/train.py", *args]


def eval_cmd(model: str, flores: str, out: Path, langs: str = "all", split: str = "devtest") -> list[str]:
    return [
        PY,
        "-m",
        "eval",
        "--model",
        model,
        "--flores",
        flores,
        "--split",
        split,
        "--langs",
        langs,
        "--out",
        str(out),
        "--no-progress",
    ]


def export_cmd(run_dir: Path, out: Path) -> list[str]:
    return [PY, "-m", "pipeline.export", str(run_dir), str(out)]


def build_untrained(data: str, out: Path, recipe: str, seed: int = 0, extra: list[str] | None = None) -> Path:
    """The recipe's model exactly as training initialises it (same flags, same seed), saved as an HF directory.

    Trainer seeds python/numpy/torch with --seed and then calls build_model (pipeline/training/trainer.py); doing the
    same here gives the same weights (tests/scripts/test_demo.py checks it against a train.py step at lr 0). `extra`:
    more train.py flags (model shape overrides).
    """
    import random

    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from pipeline.config import parse_args
    from pipeline.data.dataset import load_manifest, special_ids
    from pipeline.export import EXPORT_ATTENTION, write_sentence_transformers
    from pipeline.model.mexma import build_model

    cfg = parse_args(
        [
            "--data",
            data,
            "--output-dir",
            str(out),
            "--seed",
            str(seed),
            "--recipe",
            recipe,
            *(extra or []),
        ]
    )
    manifest = load_manifest(data)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = build_model(cfg.model, int(manifest["tokenizer"]["vocab_size"]), special_ids(manifest)["pad"])
    encoder = model.encoder
    encoder.config._attn_implementation = EXPORT_ATTENTION
    encoder.config.architectures = ["XLMRobertaModel"]
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(Path(data) / "tokenizer")).save_pretrained(str(out))
    write_sentence_transformers(out, encoder.config.hidden_size, cfg.data.max_length)
    return out


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_stamp(path: Path, stamp: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
