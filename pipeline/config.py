"""One typed training config: dataclasses -> CLI flags, an optional YAML/JSON file, checks that name the flag.

Precedence: built-in default < `--config FILE` < command-line flag. Batch arithmetic (micro batch x gradient
accumulation x world size = DeepSpeed's `train_batch_size`) is resolved and checked in one place,
`resolve_ds_config`, which also fills every `"auto"` of the DeepSpeed JSON from this config (STYLE.md #6).

The file format mirrors the sections: `{"data": {...}, "optim": {...}, "run": {...}, "model": {...}}` with the
field names below (`model` holds `pipeline.model.ModelConfig`'s fields).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.model import PRESETS, ModelConfig

REFERENCE_MICRO_BATCH = 150  # pairs per GPU in the original recipe (seed README `--batch_size 150`)
REFERENCE_GRAD_ACCUM = 2  # seed README `--number_of_iterations_to_accumulated_gradients 2`


class ConfigError(ValueError):
    """A bad flag, config file or DeepSpeed JSON; the message names the flag or file."""


def opt(default, help: str, **meta):  # noqa: A002 - `help` reads like argparse's keyword
    """A config field with its help text (and optional `flag`, `choices`) in the metadata."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class DataConfig:
    """Where the pairs come from and how they are batched and masked."""

    path: str = opt(
        "", "prepared dataset directory (data_prep output: train/, valid/, tokenizer/, manifest.json)", flag="data"
    )
    batch_pairs: int | None = opt(
        None,
        "micro batch in pairs per rank; default: the DeepSpeed JSON's "
        "train_micro_batch_size_per_gpu, else 150 (the reference)",
    )
    batch_tokens: int = opt(
        0,
        "token budget per micro batch (all four views, padding-free); 0 = fixed --batch-pairs. "
        "Batches are length-bucketed",
    )
    bucket_batches: int = opt(100, "length bucketing: sort chunks of this many batches' worth of pairs by length")
    max_length: int = opt(200, "truncate each side to this many tokens (keeping </s>); the reference's 200")
    src_mask_prob: float = opt(0.4, "masking ratio of source-side tokens")
    trg_mask_prob: float = opt(0.4, "masking ratio of target-side tokens")
    verify: str = opt("sha256", "check shards against the manifest before training", choices=("sha256", "size", "off"))
    valid_batches: int = opt(20, "validation batches per evaluation (all ranks together); 0 = the whole split")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay (the reference's torchvision-style schedule)."""

    lr: float = opt(1e-4, "peak learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay (reference `--wd None` = torch's AdamW default 0.01)")
    betas: list = opt([0.9, 0.999], "AdamW betas", nargs=2, elem=float)
    eps: float = opt(1e-8, "AdamW epsilon")
    warmup_fraction: float = opt(0.3, "fraction of --max-steps spent in linear warmup")
    warmup_start_factor: float = opt(0.1, "warmup starts at lr x this (reference --lr_warmup_decay 0.1)")
    min_lr_ratio: float = opt(0.0, "cosine ends at lr x this")
    grad_clip: float = opt(1.2, "gradient clipping (global L2 norm); 0 = off")
    grad_accum: int | None = opt(None, "micro batches per optimizer step; default: the DeepSpeed JSON's, else 2")


@dataclass
class RunConfig:
    """The run: length, checkpoints, logging, launcher-independent settings."""

    output_dir: str = opt("", "output directory: checkpoints, metrics.jsonl, resolved config")
    ds_config: str = opt("ds_configs/zero2_cpu_fp32.json", "DeepSpeed JSON (ds_configs/*.json)")
    max_steps: int = opt(0, "optimizer steps; 0 = --epochs over the train split")
    epochs: float = opt(3.0, "epochs when --max-steps is 0 (the reference: 3)")
    max_minutes: float = opt(0.0, "wall-clock budget in minutes (0 = none): stop, checkpoint and exit when spent")
    save_every: int = opt(2000, "checkpoint every N optimizer steps (and always at the end); 0 = only at the end")
    keep_checkpoints: int = opt(3, "keep the newest K complete checkpoints")
    resume: bool = opt(True, "resume from the latest complete checkpoint in --output-dir (--no-resume: start over)")
    seed: int = opt(0, "seed of sampler, masking, dropout and init")
    log_every: int = opt(10, "progress line every N optimizer steps (metrics.jsonl gets every step)")
    valid_every: int = opt(0, "validate every N optimizer steps (0 = only at the end; -1 = never)")
    max_bad_steps: int = opt(5, "stop after this many non-finite-loss steps in a row")
    wandb: str = opt("offline", "Weights & Biases mode", choices=("off", "offline", "online"))
    wandb_project: str = opt("mexma", "wandb project")
    run_name: str = opt("", "run name (wandb); default: the output directory's name")


@dataclass
class TrainConfig:
    """The resolved configuration of one training run (written to OUTPUT/config.json)."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


SECTIONS = ("data", "optim", "run", "model")


def _flag(section: str, f: dataclasses.Field) -> str:
    return f.metadata.get("flag", f.name).replace("_", "-")


@functools.cache
def _comment_help(cls) -> dict[str, str]:
    """`name: type = default  # help` comments of a dataclass (ModelConfig documents its fields that way)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^\s+(\w+): [^=#]+=[^#\n]*#\s*(.+)$", source, flags=re.M))


def _base_type(tp):
    """int | None -> int; list -> list."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return typing.get_origin(tp) or tp


def _fields(section: str):
    cls = typing.get_type_hints(TrainConfig)[section]
    hints = typing.get_type_hints(cls)
    return [(f, _base_type(hints[f.name])) for f in dataclasses.fields(cls)]


def build_parser() -> argparse.ArgumentParser:
    """One flag per leaf field; defaults are SUPPRESSed so that only the flags a user typed override the file."""
    p = argparse.ArgumentParser(
        description="Train a MEXMA encoder with DeepSpeed ZeRO-2 (deepspeed/torchrun/python).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML or JSON file with sections data/optim/run/model (flags override it)")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    for section in SECTIONS:
        group = p.add_argument_group(section)
        for f, tp in _fields(section):
            help_ = f.metadata.get("help") or _comment_help(typing.get_type_hints(TrainConfig)[section]).get(f.name, "")
            kw = {"dest": f"{section}.{f.name}", "help": f"{help_} (default: {_default(f)!r})"}
            if tp is not bool:
                kw["metavar"] = _flag(section, f).upper().replace("-", "_")
            if tp is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif tp is list or tp is tuple:
                kw.update(nargs=f.metadata.get("nargs", "+"), type=f.metadata.get("elem", str))
            else:
                kw["type"] = tp if tp in (int, float, str) else str
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            group.add_argument(f"--{_flag(section, f)}", **kw)
    return p


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def load_config_file(path: str) -> dict:
    """YAML or JSON -> {section: {field: value}}; unknown sections/fields are an error naming them."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raw = json.loads(text)
    except Exception as e:  # noqa: BLE001 - the parser's own message is the useful part
        raise ConfigError(f"--config {path}: cannot parse: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a mapping of sections {SECTIONS}, got {type(raw).__name__}")
    for section, values in raw.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(
                f"--config {path}: unknown section {section!r} (expected a mapping under one of {SECTIONS})"
            )
        known = {f.name for f, _ in _fields(section)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"--config {path}: unknown field(s) {unknown} in section {section!r}; known: {sorted(known)}"
            )
    return raw


def config_from_dict(values: dict) -> TrainConfig:
    """{section: {field: value}} (missing = default) -> validated TrainConfig."""
    hints = typing.get_type_hints(TrainConfig)
    parts = {}
    for section in SECTIONS:
        given = dict(values.get(section, {}))
        for f, tp in _fields(section):
            if f.name in given and given[f.name] is not None and tp in (int, float):
                given[f.name] = _coerce(section, f, tp, given[f.name])
        parts[section] = hints[section](**given)
    cfg = TrainConfig(**parts)
    validate(cfg)
    return cfg


def _coerce(section, f, tp, value):
    try:
        if tp is int and float(value) != int(float(value)):
            raise ValueError
        return tp(float(value)) if tp is int else tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{_flag(section, f)}: expected {tp.__name__}, got {value!r}") from None


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line (+ optional --config file) -> validated TrainConfig."""
    ns = vars(build_parser().parse_args(argv))
    values: dict = load_config_file(ns.pop("config")) if "config" in ns else {}
    ns.pop("local_rank", None)
    for key, value in ns.items():
        section, name = key.split(".", 1)
        values.setdefault(section, {})[name] = value
    return config_from_dict(values)


def _check(ok: bool, flag: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"--{flag}: {msg}")


def validate(cfg: TrainConfig) -> None:
    """Range checks; each error names the flag."""
    d, o, r = cfg.data, cfg.optim, cfg.run
    _check(bool(d.path), "data", "required (a prepared dataset directory)")
    _check(bool(r.output_dir), "output-dir", "required")
    _check(d.batch_pairs is None or d.batch_pairs > 0, "batch-pairs", f"must be > 0, got {d.batch_pairs}")
    _check(d.batch_tokens >= 0, "batch-tokens", f"must be >= 0, got {d.batch_tokens}")
    _check(d.bucket_batches > 0, "bucket-batches", f"must be > 0, got {d.bucket_batches}")
    _check(d.max_length >= 3, "max-length", f"must be >= 3 (<s> x </s>), got {d.max_length}")
    _check(
        d.batch_tokens == 0 or d.batch_tokens >= 4 * d.max_length,
        "batch-tokens",
        f"{d.batch_tokens} cannot hold one pair of --max-length {d.max_length} (4 views: needs >= {4 * d.max_length})",
    )
    for flag, p in (("src-mask-prob", d.src_mask_prob), ("trg-mask-prob", d.trg_mask_prob)):
        _check(0.0 <= p < 1.0, flag, f"must lie in [0, 1), got {p}")
    _check(d.valid_batches >= 0, "valid-batches", f"must be >= 0, got {d.valid_batches}")
    _check(o.lr > 0, "lr", f"must be > 0, got {o.lr}")
    _check(o.weight_decay >= 0, "weight-decay", f"must be >= 0, got {o.weight_decay}")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "betas", f"two values in [0, 1), got {o.betas}")
    _check(0.0 <= o.warmup_fraction < 1.0, "warmup-fraction", f"must lie in [0, 1), got {o.warmup_fraction}")
    _check(
        0.0 <= o.warmup_start_factor <= 1.0, "warmup-start-factor", f"must lie in [0, 1], got {o.warmup_start_factor}"
    )
    _check(0.0 <= o.min_lr_ratio <= 1.0, "min-lr-ratio", f"must lie in [0, 1], got {o.min_lr_ratio}")
    _check(o.grad_clip >= 0, "grad-clip", f"must be >= 0, got {o.grad_clip}")
    _check(o.grad_accum is None or o.grad_accum > 0, "grad-accum", f"must be > 0, got {o.grad_accum}")
    _check(r.max_steps >= 0, "max-steps", f"must be >= 0, got {r.max_steps}")
    _check(r.max_steps > 0 or r.epochs > 0, "epochs", f"must be > 0 when --max-steps is 0, got {r.epochs}")
    _check(r.max_minutes >= 0, "max-minutes", f"must be >= 0, got {r.max_minutes}")
    _check(r.save_every >= 0, "save-every", f"must be >= 0, got {r.save_every}")
    _check(r.keep_checkpoints >= 1, "keep-checkpoints", f"must be >= 1, got {r.keep_checkpoints}")
    _check(r.log_every >= 1, "log-every", f"must be >= 1, got {r.log_every}")
    _check(r.valid_every >= -1, "valid-every", f"must be >= -1, got {r.valid_every}")
    _check(r.max_bad_steps >= 1, "max-bad-steps", f"must be >= 1, got {r.max_bad_steps}")
    try:
        cfg.model.validate()
    except ValueError as e:  # "ModelConfig.num_layers must ..." -> "--num-layers: ModelConfig.num_layers must ..."
        names = re.findall(r"ModelConfig\.(\w+)", str(e))
        flag = f"--{names[0].replace('_', '-')}: " if names else "model config: "
        raise ConfigError(f"{flag}{e}") from e
    # XLM-R positions run from padding_idx + 1 = 2, so a table of P rows holds sequences of P - 2 tokens (514 -> 512)
    positions = cfg.model.max_positions - 2
    _check(
        cfg.model.model not in PRESETS or d.max_length <= positions,
        "max-length",
        f"{d.max_length} exceeds the position table (--max-positions {cfg.model.max_positions} holds {positions})",
    )


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


# -- DeepSpeed JSON --------------------------------------------------------------------------------------------


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
            "--warmup-fraction, --warmup-start-factor, --min-lr-ratio (pipeline/engine.py)"
        )
    if ds.get("bf16", {}).get("enabled") and ds["bf16"].get("check_grad_overflow") is False:
        raise ConfigError(
            f"--ds-config {path}: bf16.check_grad_overflow must stay true: a non-finite loss is skipped through "
            "ZeRO's overflow check (pipeline/engine.py), without it NaN gradients would reach the weights"
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


def resolve_ds_config(cfg: TrainConfig, ds: dict, world_size: int) -> dict:
    """Fill the DeepSpeed JSON's "auto" values from `cfg` and check micro x accumulation x world = global batch.

    Precedence of the micro batch and the accumulation: flag/config file > a number in the JSON > reference default.
    """
    path = cfg.run.ds_config
    out = copy.deepcopy(ds)
    micro = cfg.data.batch_pairs or _int_or_auto(ds, "train_micro_batch_size_per_gpu", path) or REFERENCE_MICRO_BATCH
    gas = cfg.optim.grad_accum or _int_or_auto(ds, "gradient_accumulation_steps", path)
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


def _fill(obj: dict, key: str, value, flag: str, path: str) -> None:
    """The typed config owns this value: fill "auto", refuse a different number in the JSON."""
    current = obj.get(key, "auto")
    if current != "auto" and current != value:
        raise ConfigError(
            f"--ds-config {path}: {key} = {current!r} conflicts with --{flag} {value!r}; "
            f'set it to "auto" in the JSON and use --{flag}'
        )
    obj[key] = value


# -- run records ---------------------------------------------------------------------------------------------------


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
        "git_sha": git_sha(Path(__file__).resolve().parent.parent),
        "data": str(Path(cfg.data.path).resolve()),
        "manifest_sha256": manifest_sha256,
        "world_size": world_size,
    }
    for name, obj in (("config.json", to_dict(cfg)), ("ds_config.json", ds_config), ("run_info.json", info)):
        (out / name).write_text(json.dumps(obj, indent=2) + "\n")
