"""The DeepSpeed JSON: load and check a `ds_configs/*.json`, fill its "auto" values from the typed config, and the
batch arithmetic (micro batch x gradient accumulation x world size = `train_batch_size`), checked in one place with a
message that spells it out."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from pipeline.config.schema import ConfigError, TrainConfig

REFERENCE_MICRO_BATCH = 150  # pairs per GPU in the original recipe (seed README `--batch_size 150`)
REFERENCE_GRAD_ACCUM = 2  # seed README `--number_of_iterations_to_accumulated_gradients 2`


def load_ds_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--ds-config {path}: no such file")
    try:
        ds = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--ds-config {path}: invalid JSON: {e}") from e
    if not isinstance(ds, dict):
        raise ConfigError(f"--ds-config {path}: expected a JSON object")
    if "scheduler" in ds:
        raise ConfigError(
            f"--ds-config {path}: remove the 'scheduler' block; the schedule comes from --lr, "
            "--warmup-fraction, --warmup-start-factor, --min-lr-ratio (pipeline/training/trainer.py)"
        )
    if ds.get("bf16", {}).get("enabled") and ds["bf16"].get("check_grad_overflow") is False:
        raise ConfigError(
            f"--ds-config {path}: bf16.check_grad_overflow must stay true: a non-finite loss is skipped through "
            "ZeRO's overflow check (pipeline/training/trainer.py), without it NaN gradients would reach the weights"
        )
    if ds.get("fp16", {}).get("enabled"):
        raise ConfigError(
            f"--ds-config {path}: fp16 is not supported: the chunked cross-entropy writes its gradients (softmax x "
            "token weight, ~1e-4 x p) in the forward, before DeepSpeed's loss scale applies, and fp16 flushes them "
            'to zero; use bf16 ("bf16": {"enabled": true}, ds_configs/zero2_bf16.json)'
        )
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ConfigError(
            f"--ds-config {path}: zero_optimization.stage {stage} unsupported (0, 1 or 2; ZeRO-3 "
            "shards the parameters, which export and the packed model do not expect)"
        )
    return ds


def _int_or_auto(ds: dict, key: str, path: str) -> int | None:
    v = ds.get(key, "auto")
    if v == "auto" or v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f'--ds-config {path}: {key} must be a positive integer or "auto", got {v!r}')
    return v


def resolve_ds_config(cfg: TrainConfig, ds: dict, world_size: int, previous: dict | None = None) -> dict:
    """Fill the DeepSpeed JSON's "auto" values from `cfg` and check micro x accumulation x world = global batch.

    Precedence of the micro batch and the accumulation: flag/config file > a number in the JSON > reference default.
    On a resume only an explicit --grad-accum must keep the global batch as given; the JSON's
    gradient_accumulation_steps is a default (as the flag's absence is) and is rescaled to the new world size.
    previous: the resumed checkpoint's `batch_record` ({micro, gas, world_size}). A resume keeps the global batch
    through the accumulation (gas' = W x gas / W'); on another world size DeepSpeed loads a universal checkpoint
    (ZeRO state re-partitioned, pipeline/training/checkpoint.py). ConfigError when W x gas / W' is not an integer or the
    flags would change the global batch.
    """
    path = cfg.run.ds_config
    out = copy.deepcopy(ds)
    micro = cfg.data.batch_pairs or _int_or_auto(ds, "train_micro_batch_size_per_gpu", path) or REFERENCE_MICRO_BATCH
    json_gas = _int_or_auto(ds, "gradient_accumulation_steps", path)
    gas = cfg.optim.grad_accum or json_gas
    if previous is not None:  # a resume keeps the global batch (the sampler's plan is in global micro batches)
        # Only --grad-accum binds a resume; the JSON's number is a default like the flag's, rescaled with the world.
        gas = _gas_for_new_world(previous, micro, cfg.optim.grad_accum, world_size)
        if int(previous["world_size"]) != world_size:
            out["checkpoint"] = {**out.get("checkpoint", {}), "load_universal": True}
    total = _int_or_auto(ds, "train_batch_size", path)
    if gas is None:
        gas = REFERENCE_GRAD_ACCUM if total is None else max(total // (micro * world_size), 1)
    if total is not None and total != micro * gas * world_size:
        raise ConfigError(
            f"batch arithmetic: train_batch_size {total} (from {path}) != micro batch {micro} (--batch-pairs or "
            f"train_micro_batch_size_per_gpu) x gradient accumulation {gas} (--grad-accum or "
            f"gradient_accumulation_steps) x world size {world_size} = {micro * gas * world_size}; "
            'set train_batch_size to "auto" or make the three agree'
        )
    out.update(
        train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=gas, train_batch_size=micro * gas * world_size
    )
    o = cfg.optim
    _fill(out, "gradient_clipping", o.grad_clip, "grad-clip", path)
    optimizer = out.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = optimizer.setdefault("params", {})
    for key, value, flag in (
        ("lr", o.lr, "lr"),
        ("betas", list(o.betas), "betas"),
        ("eps", o.eps, "eps"),
        ("weight_decay", o.weight_decay, "weight-decay"),
    ):
        _fill(params, key, value, flag, path)
    out.setdefault("steps_per_print", 10**9)  # our own progress line replaces DeepSpeed's
    return out


def batch_record(ds: dict, world_size: int) -> dict:
    """The batch arithmetic a checkpoint is saved with (its run record), read back by `resolve_ds_config`."""
    micro, gas = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    return {"micro": micro, "gas": gas, "world_size": world_size}


def _gas_for_new_world(previous: dict, micro: int, gas: int | None, world: int) -> int:
    """Accumulation that keeps the checkpoint's global batch (micro x gas x W) on `world` ranks, or ConfigError."""
    p_micro, p_gas, p_world = int(previous["micro"]), int(previous["gas"]), int(previous["world_size"])
    per_micro = p_gas * p_world  # micro batches per optimizer step, all ranks (the sampler's global plan)
    fits = [w for w in range(1, per_micro + 1) if per_micro % w == 0]
    how = (
        f"the checkpoint has micro batch {p_micro} x gradient accumulation {p_gas} x world size {p_world} = "
        f"{p_micro * per_micro} pairs per step; this run has world size {world}"
    )
    if micro != p_micro:
        raise ConfigError(f"--batch-pairs {micro}: {how}; keep --batch-pairs {p_micro} to resume on another world size")
    if per_micro % world:
        raise ConfigError(
            f"resuming on {world} ranks: {how}, and {p_gas} x {p_world} / {world} is not an integer, so the global "
            f"batch cannot be kept; relaunch on a world size in {fits} (--grad-accum {per_micro} / world size), "
            "or --no-resume to start a new run"
        )
    if gas is not None and gas * world != per_micro:
        raise ConfigError(
            f"--grad-accum {gas}: {how}; keeping the global batch needs --grad-accum {per_micro // world} "
            f"({p_gas} x {p_world} / {world}), or leave --grad-accum unset"
        )
    return per_micro // world


def _fill(obj: dict, key: str, value, flag: str, path: str) -> None:
    """The typed config owns this value: fill "auto", refuse a different number in the JSON."""
    current = obj.get(key, "auto")
    if current != "auto" and current != value:
        raise ConfigError(
            f"--ds-config {path}: {key} = {current!r} conflicts with --{flag} {value!r}; "
            f'set it to "auto" in the JSON and use --{flag}'
        )
    obj[key] = value
