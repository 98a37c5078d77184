"""Relaunch rules: what a relaunch into an existing --output-dir may change.

A run's record (`run_record()`: the resolved config with the schedule's real length, the data manifest's and the
tokenizer's sha256, the world size) is saved inside every checkpoint (`step_N/run_record.json`, hashed in its
COMPLETE.json), so a relaunch is compared with what the checkpoint was trained with, not with OUTPUT/config.json
(which the relaunch is about to rewrite). Each differing field falls in one class:

- never: the data (manifest sha256), the tokenizer, the model's shape, the seed. Refused: the weights, the data
  order or the vocabulary would no longer match.
- change: optimizer and schedule settings, the data plan (batching, masking, sampling: the --lang-weights file by its
  content's sha256, not its path), the losses' weights and dropouts, the xsim test set and the mining set (by
  content: `best` is compared only within one test set). Refused unless --allow-config-change; then the new values
  are applied.
- extend: a larger --max-steps (or --epochs). Allowed: the cosine is recomputed over the new length and continues
  from the current step (the learning rate is a pure function of the applied step and the config).
- free: logging, checkpoint and evaluation cadence, wall-clock budget, wandb, attention backend, world size and
  --grad-accum (the global batch is kept by the resume on another number of processes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config.schema import SECTIONS, TrainConfig, flag_name, section_fields, to_dict
from pipeline.training.checkpoint import RUN_RECORD
from runtime.collectives import broadcast_object

log = logging.getLogger("pipeline.train")
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
# Files that change training, compared by content (sha256) in the "change" class: flag -> flattened record key.
CONTENT = {"--lang-weights (its content)": "data.lang_weights_sha256", "--xsim-data (the test set)": "run.xsim_sha256"}
CONTENT["--mine-data (the mining set)"] = "run.mine_sha256"
FREE = {
    "data.path",  # the data's identity is its manifest sha256: a moved copy of the same dataset may resume
    "data.lang_weights",  # compared by content: data.lang_weights_sha256
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
    *(f"run.{n}" for n in ("wandb", "wandb_project", "run_name", "verbose")),
    *(f"run.{n}" for n in ("mine_every", "mine_data", "mine_pair", "mine_split", "best_metric")),
    "run.recipe",  # where the values came from: the values themselves are compared
}


class RelaunchError(RuntimeError):
    """A relaunch refused before anything on disk changed (lock held, config change); the message says what to do."""


def run_record(
    cfg: TrainConfig, max_steps: int, manifest: dict, world_size: int, hook_fields: dict | None = None, **resolved
) -> dict:
    """What a checkpoint was trained with: the config (run.max_steps = the schedule's resolved length), the data, the
    content of the files that change training (--lang-weights), and the hooks' fields (`Hook.record`: the xsim test
    set's fingerprint).

    resolved: what start-up decided; `batch` (the batch arithmetic, read back by a relaunch on another world
    size), `pair_shares` (target share of each language pair), `backends` (the backend report). config.json shows
    them under "resolved"."""
    config = to_dict(cfg)
    config["run"]["max_steps"] = max_steps
    record = {
        "config": config,
        "max_steps": max_steps,
        "data": str(Path(cfg.data.path).resolve()),
        "manifest_sha256": manifest_sha256(cfg.data.path),
        "tokenizer_sha256": tokenizer_sha256(cfg.data.path, manifest),
        "world_size": world_size,
        "lang_weights_sha256": file_sha256(cfg.data.lang_weights),
    }
    record.update(hook_fields or {})
    if "batch" in resolved:
        record["batch"] = resolved["batch"]
    if "pair_shares" in resolved:
        record["pair_shares"] = resolved["pair_shares"]
    record["resolved"] = {k: resolved[k] for k in ("backends", "pair_shares") if k in resolved}
    return record


def state_schedule(record: dict, schedule) -> None:
    """Write a Schedule (pipeline/training/schedule.py) into the record: its length, and its fit entry if any."""
    record["max_steps"] = record["config"]["run"]["max_steps"] = schedule.length
    if schedule.fit is not None:
        record["schedule"] = record["resolved"]["schedule"] = schedule.fit


def file_sha256(path: str) -> str:
    """sha256 of a file's content ("" for no file): what a relaunch compares, not the path."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""


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
    for key in CONTENT.values():  # absent in older records, or without its hook: not compared
        if key.split(".", 1)[1] in record:
            flat[key] = record[key.split(".", 1)[1]]
    return flat


def _flag(key: str) -> str:
    if key in NEVER:
        return NEVER[key]
    if key in CONTENT.values():
        return {v: k for k, v in CONTENT.items()}[key]
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


# -- every rank agrees with rank 0 (one broadcast of rank 0's verdict) ----------------------------------------------
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
