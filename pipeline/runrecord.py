"""Relaunch rules and the output-directory lock: what a relaunch into an existing --output-dir may change.

A run's record (`run_record()`: the resolved config with the schedule's real length, the data manifest's and the
tokenizer's sha256, the world size) is saved inside every checkpoint (`step_N/run_record.json`, hashed in its
COMPLETE.json), so a relaunch is compared with what the checkpoint was trained with, not with OUTPUT/config.json
(which the relaunch is about to rewrite). Each differing field falls in one class:

- never: the data (manifest sha256), the tokenizer, the model's shape, the seed. Refused: the weights, the data
  order or the vocabulary would no longer match.
- change: optimizer and schedule settings, the data plan (batching, masking, sampling), the losses' weights and
  dropouts. Refused unless --allow-config-change; then the new values are applied to the loaded optimizer.
- extend: a larger --max-steps (or --epochs). Allowed: the cosine is recomputed over the new length and continues
  from the current step (the learning rate is a pure function of the applied step and the config).
- free: logging, checkpoint and evaluation cadence, wall-clock budget, wandb, attention backend, world size and
  --grad-accum (the global batch is kept by the resume on another number of processes).

`OutputLock`: `OUTPUT/.lock` ({host, pid, start time}) taken by rank 0 with an exclusive create before anything is
written; a second launch into the same directory is refused naming the holder. A lock whose pid is dead on this host
(a SIGKILLed run) is stale and taken over; a lock of another host is never guessed stale: the message says how to
remove it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.checkpoint import RUN_RECORD
from pipeline.config.schema import SECTIONS, TrainConfig, flag_name, section_fields, to_dict
from pipeline.distributed import broadcast_object

log = logging.getLogger("pipeline.train")
LOCK = ".lock"
# Moved into OUTPUT/replaced-<time>/ by --no-resume, with checkpoints/: the old run stays whole (and exportable);
# universal/ holds conversions of the old run's tags (a new run's step_N must never reuse them).
RUN_FILES = ("metrics.jsonl", "wandb_id.txt", "config.json", "ds_config.json", "run_info.json", "tokenizer", "wandb")
RUN_FILES += ("universal",)

NEVER = {
    "data.manifest_sha256": "--data",
    "data.tokenizer_sha256": "tokenizer (--data's tokenizer/)",
    "run.seed": "--seed",
    **{f"model.{n}": f"--{n.replace('_', '-')}" for n in ("model", "num_layers", "hidden_size", "num_heads")},
    **{f"model.{n}": f"--{n.replace('_', '-')}" for n in ("ffn_size", "max_positions", "head_layers", "head_heads")},
    "model.head_ffn": "--head-ffn",
}
FREE = {
    "data.path",  # the data's identity is its manifest sha256: a moved copy of the same dataset may resume
    "data.verify",
    "data.prefetch",
    "data.valid_batches",
    "optim.grad_accum",
    "run.epochs",  # compared through the resolved max_steps
    "run.max_steps",  # idem
    "model.attention",
    "model.kernels",
    "model.gradient_checkpointing",
    "model.ce_chunk_bytes",
    "model.head_init",  # only used to initialise
    *(f"run.{n}" for n in ("output_dir", "ds_config", "max_minutes", "save_every", "keep_checkpoints", "resume")),
    "run.fit_to_minutes",  # the fitted length is the record's max_steps, compared as such
    "run.fit_after",
    *(f"run.{n}" for n in ("allow_config_change", "trust_checkpoint", "log_every", "valid_every", "max_bad_steps")),
    *(f"run.{n}" for n in ("xsim_every", "xsim_data", "xsim_split", "xsim_langs", "xsim_target", "dist_timeout")),
    *(f"run.{n}" for n in ("wandb", "wandb_project", "run_name")),
    "run.recipe",  # where the values came from: the values themselves are compared
}


class RelaunchError(RuntimeError):
    """A relaunch refused before anything on disk changed (lock held, config change); the message says what to do."""


def run_record(cfg: TrainConfig, max_steps: int, manifest: dict, manifest_sha256: str, world_size: int) -> dict:
    """What a checkpoint was trained with: the config (run.max_steps = the schedule's resolved length), the data."""
    config = to_dict(cfg)
    config["run"]["max_steps"] = max_steps
    return {
        "config": config,
        "max_steps": max_steps,
        "data": str(Path(cfg.data.path).resolve()),
        "manifest_sha256": manifest_sha256,
        "tokenizer_sha256": tokenizer_sha256(cfg.data.path, manifest),
        "world_size": world_size,
    }


def manifest_sha256(data_dir: str | Path) -> str:
    return hashlib.sha256((Path(data_dir) / "manifest.json").read_bytes()).hexdigest()


def tokenizer_sha256(data_dir: str | Path, manifest: dict) -> str:
    """sha256 of the tokenizer the run copies (`DATA/tokenizer/tokenizer.json`, what export ships), else the
    manifest's: a tokenizer replaced beside an unchanged manifest is still seen."""
    path = Path(data_dir) / "tokenizer" / "tokenizer.json"
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return manifest.get("tokenizer", {}).get("sha256", "")


def read_record(ckpt_dir: Path) -> dict | None:
    """The record saved in a checkpoint, or None for a checkpoint written before records were saved."""
    path = Path(ckpt_dir) / RUN_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _flat(record: dict) -> dict[str, object]:
    flat = {f"{s}.{k}": v for s in SECTIONS for k, v in record["config"].get(s, {}).items()}
    flat["data.manifest_sha256"] = record.get("manifest_sha256")
    flat["data.tokenizer_sha256"] = record.get("tokenizer_sha256")
    return flat


def _flag(key: str) -> str:
    if key in NEVER:
        return NEVER[key]
    section, name = key.split(".", 1)
    for f, _ in section_fields(section):
        if f.name == name:
            return f"--{flag_name(f)}"
    return key


@dataclass
class Changes:
    """Differences between a checkpoint's record and a relaunch's, by class (see the module docstring)."""

    never: list[str] = field(default_factory=list)
    change: list[str] = field(default_factory=list)
    free: list[str] = field(default_factory=list)
    extend: str = ""


def compare(old: dict, new: dict) -> Changes:
    """Classify every differing field of two run records; each entry reads `--flag: OLD in the checkpoint, NEW now`."""
    out = Changes()
    a, b = _flat(old), _flat(new)
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b or a[key] == b[key]:  # a field one side does not know: not compared
            continue
        line = f"{_flag(key)}: {a.get(key)!r} in the checkpoint, {b.get(key)!r} now"
        (out.never if key in NEVER else out.free if key in FREE else out.change).append(line)
    steps = f"--max-steps (resolved): {old['max_steps']} in the checkpoint, {new['max_steps']} now"
    if new["max_steps"] > old["max_steps"]:
        out.extend = steps
    elif new["max_steps"] < old["max_steps"]:
        out.change.append(steps + " (a shorter schedule)")
    return out


def check_relaunch(ckpt_dir: Path, old: dict | None, new: dict, allow_change: bool) -> Changes:
    """Refuse (RelaunchError) a relaunch that changes what cannot change, or an optimizer/schedule setting without
    --allow-config-change; log what is accepted. Nothing on disk is touched."""
    if old is None:  # such a checkpoint also has one AdamW group where this code builds two: it cannot load
        raise RelaunchError(
            f"relaunch refused: {ckpt_dir} holds no {RUN_RECORD}: it was written by an older version of this code "
            "(one AdamW parameter group, no record of its config), which cannot resume it. Export it (python -m "
            "pipeline.export), or relaunch with --no-resume to start over (the old run is moved to "
            "OUTPUT/replaced-<time>/). Nothing was changed on disk"
        )
    changes = compare(old, new)
    refused = [f"  {c} (cannot change on resume)" for c in changes.never]
    if not allow_change:
        refused += [
            f"  {c} (an optimizer/schedule/data-plan change: --allow-config-change accepts it)" for c in changes.change
        ]
    if refused:
        raise RelaunchError(
            f"relaunch refused: {ckpt_dir} was trained with another configuration ({ckpt_dir / RUN_RECORD}):\n"
            + "\n".join(refused)
            + "\nRelaunch with the checkpoint's values, or --no-resume to start over (the old run is moved to "
            "OUTPUT/replaced-<time>/), or another --output-dir. Nothing was changed on disk"
        )
    for line in changes.change:
        log.warning("--allow-config-change: %s", line)
    if changes.extend:
        log.info("%s: the cosine is recomputed over the new length and continues from the current step", changes.extend)
    for line in changes.free:
        log.info("relaunch changes %s", line)
    return changes


# -- the output-directory lock ----------------------------------------------------------------------------------------
def _proc_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (/proc/PID/stat field 22), None when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, starttime field 22
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, start: str | None) -> bool:
    """Is the process that wrote the lock still running? A reused pid (another start time) is not it."""
    if Path("/proc/self/stat").is_file():
        now = _proc_start(pid)
        return now is not None and (not start or not now or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """`OUTPUT/.lock`: one training per output directory (see the module docstring). `acquire` raises RelaunchError
    naming the holder; `release` (also at interpreter exit) removes the lock if it is still this process's."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK
        self.held = False

    def _mine(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _proc_start(os.getpid()) or "",
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self._mine()
        tmp = self.path.with_name(f"{LOCK}.{mine['host']}.{mine['pid']}")
        tmp.write_text(json.dumps(mine) + "\n")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic, fails if the lock exists: readers never see half a lock
                    self.held = True
                    atexit.register(self.release)
                    return
                except FileExistsError:
                    self._clear_if_stale()
            raise RelaunchError(f"{self.path}: could not take the lock (another launch keeps taking it)")
        finally:
            tmp.unlink(missing_ok=True)

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return {}

    def _clear_if_stale(self) -> None:
        """Remove a lock left by a dead process of this host; raise RelaunchError for a live or foreign holder."""
        held = self.holder()
        if held is None:
            return  # released meanwhile: try again
        who = (
            f"pid {held.get('pid')} on host {held.get('host')}, since {held.get('time')}"
            if held
            else "an unreadable lock"
        )
        if held and held.get("host") == socket.gethostname():
            if not _alive(int(held.get("pid", -1)), held.get("start")):
                log.warning("%s: removing a stale lock of %s (that process is gone)", self.path, who)
                self.path.unlink(missing_ok=True)
                return
            raise RelaunchError(
                f"{self.path}: another training is running in this --output-dir ({who}); wait for it to end, "
                "stop it, or use another --output-dir. Nothing was changed on disk"
            )
        raise RelaunchError(
            f"{self.path}: the output directory is locked by {who}; if that process is truly gone (check on "
            f"that host), remove {self.path} and relaunch. Nothing was changed on disk"
        )

    def release(self) -> None:
        held = self.holder() or {}
        if self.held and (held.get("host"), held.get("pid")) == (socket.gethostname(), os.getpid()):
            self.path.unlink(missing_ok=True)
        self.held = False


# -- every rank agrees with rank 0 (one broadcast of rank 0's verdict) ----------------------------------------------
def take_output_lock(output_dir: str | Path, rank: int) -> OutputLock | None:
    """Rank 0 takes OUTPUT/.lock; a refusal is raised on every rank (RelaunchError). -> the lock on rank 0."""
    lock, error = None, None
    if rank == 0:
        lock = OutputLock(output_dir)
        try:
            lock.acquire()
        except RelaunchError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        raise RelaunchError(error)
    return lock


def check_relaunch_on_rank0(ckpt_dir: Path, new: dict, allow_change: bool, rank: int) -> None:
    """`check_relaunch` against the checkpoint's record, on rank 0; a refusal is raised on every rank."""
    error = None
    if rank == 0:
        try:
            check_relaunch(ckpt_dir, read_record(ckpt_dir), new, allow_change)
        except RelaunchError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        raise RelaunchError(error)
