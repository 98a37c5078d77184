"""The training config's schema: one dataclass per section, a help text per field, range checks naming the flag.

`TrainConfig` = `DataConfig` + `OptimConfig` + `RunConfig` + the model's `ModelConfig` (pipeline/model/mexma.py).
Each field is declared with `pipeline.fields.opt(default, help)`; the command line (cli.py) and the docs' flag table
read that help. `validate` is the one place values are range-checked; every error names the flag.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.fields import opt
from pipeline.model.mexma import PRESETS, ModelConfig, ModelConfigError
from runtime.hub import HubUnreachableError, check_hub_name


class ConfigError(ValueError):
    """A bad flag, config file or DeepSpeed JSON; the message names the flag or file."""


@dataclass
class DataConfig:
    """Where the pairs come from and how they are sampled, batched and masked."""

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
    lang_alpha: float = opt(
        1.0,
        "language-pair sampling temperature: pair p is drawn with probability ~ rows_p ** alpha "
        "(1 = proportional to the rows, 0 = uniform over pairs; XLM-R / NLLB use ~0.3)",
    )
    lang_weights: str = opt("", 'JSON file {"src-trg": weight} overriding the alpha-derived pair weights')
    epoch_pairs: int = opt(0, "pairs per epoch when sampling is not proportional (0 = the number of training rows)")
    prefetch: int = opt(2, "micro batches read, masked and packed ahead in a background thread (0 = off)")
    verify: str = opt("sha256", "check shards against the manifest before training", choices=("sha256", "size", "off"))
    valid_batches: int = opt(20, "validation batches per evaluation (all ranks together); 0 = the whole split")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay (the reference's torchvision-style schedule)."""

    lr: float = opt(1e-4, "peak learning rate")
    weight_decay: float = opt(
        0.0,
        "AdamW weight decay, applied only to parameters with >= 2 dimensions (the original's grouping; its "
        "`--wd None` means 0.0 everywhere)",
    )
    betas: list = opt([0.9, 0.999], "AdamW betas", nargs=2, elem=float)
    eps: float = opt(1e-8, "AdamW epsilon")
    warmup_fraction: float = opt(0.3, "fraction of --max-steps spent in linear warmup")
    warmup_start_factor: float = opt(0.1, "warmup starts at lr x this (reference --lr_warmup_decay 0.1)")
    min_lr_ratio: float = opt(0.0, "cosine ends at lr x this")
    grad_clip: float = opt(1.2, "gradient clipping (global L2 norm); 0 = off")
    grad_accum: int | None = opt(
        None,
        "micro batches per optimizer step; default: the DeepSpeed JSON's, else 2. On a relaunch with another "
        "number of processes, the global batch is kept by rescaling it",
    )


@dataclass
class RunConfig:
    """The run: length, checkpoints, evaluation, logging, launcher-independent settings."""

    output_dir: str = opt("", "output directory: checkpoints, metrics.jsonl, resolved config")
    recipe: str = opt(
        "",
        "training recipe: a name in recipes/ (e.g. tiny-cpu, paper) or a JSON file of flags; --config and the flags "
        "given override its values (pipeline/config/recipes.py)",
    )
    ds_config: str = opt("ds_configs/zero2_cpu_fp32.json", "DeepSpeed JSON (ds_configs/*.json)")
    max_steps: int = opt(0, "optimizer steps; 0 = --epochs over the train split")
    epochs: float = opt(3.0, "epochs when --max-steps is 0 (the reference: 3)")
    max_minutes: float = opt(0.0, "wall-clock budget in minutes (0 = none): stop, checkpoint and exit when spent")
    fit_to_minutes: bool = opt(
        False,
        "size the schedule to --max-minutes: after --fit-after steps at the warmup's first lr, --max-steps (then an "
        "upper bound) becomes the steps the measured speed fits in what is left of the budget, evaluations and the "
        "final checkpoint included; the fitted length is kept in run_record.json / config.json and a relaunch "
        "continues it",
    )
    fit_after: int = opt(20, "steps timed before --fit-to-minutes sizes the schedule (the first 3 are not timed)")
    save_every: int = opt(2000, "checkpoint every N optimizer steps (and always at the end); 0 = only at the end")
    keep_checkpoints: int = opt(3, "keep the newest K complete checkpoints (the `best` one is never pruned)")
    resume: bool = opt(True, "resume from the latest complete checkpoint in --output-dir (--no-resume: start over)")
    allow_config_change: bool = opt(
        False,
        "on resume, accept changed optimizer, schedule, data-plan or loss settings (a longer --max-steps needs no "
        "flag; data, tokenizer, model shape and seed never change)",
    )
    trust_checkpoint: bool = opt(
        False,
        "load checkpoint files that need more than the weights-only unpickler (runs their code: only "
        "for checkpoints you made yourself)",
    )
    seed: int = opt(0, "seed of sampler, masking, dropout and init")
    log_every: int = opt(10, "progress line every N optimizer steps (metrics.jsonl gets every step)")
    valid_every: int = opt(0, "validate every N optimizer steps (0 = only at the end; -1 = never)")
    xsim_every: int = opt(0, "xsim / xsim++ on --xsim-data every N optimizer steps (0 = never)")
    xsim_data: str = opt("", "FLORES-200-layout directory ({dev,devtest}/{lang}.{dev,devtest}) for --xsim-every")
    xsim_split: str = opt("dev", "split of --xsim-data scored during training", choices=("dev", "devtest"))
    xsim_langs: str = opt("all", "comma-separated languages of --xsim-data to score against the target, or all")
    xsim_target: str = opt("eng_Latn", "target language of --xsim-data (every other language is mined against it)")
    mine_every: int = opt(0, "BUCC-style mining F1 on --mine-data every N optimizer steps (0 = never)")
    mine_data: str = opt("", "BUCC-layout directory ({pair}.{split}.{xx,en}: id<TAB>sentence; {pair}.{split}.gold)")
    mine_pair: str = opt("", "comma-separated pairs of --mine-data mined during training, e.g. de-en (pooled F1)")
    mine_split: str = opt("sample", "split of --mine-data mined during training (its gold must exist)")
    best_metric: str = opt(
        "auto",
        "what chooses the `best` checkpoint: xsim (lowest pooled xsim error), mine (highest pooled mining F1), or "
        "auto (xsim when --xsim-every is on, else mine)",
        choices=("auto", "xsim", "mine"),
    )
    max_bad_steps: int = opt(5, "stop after this many non-finite-loss steps in a row")
    dist_timeout: float = opt(30.0, "process-group timeout in minutes (a rank waiting longer on a collective fails)")
    wandb: str = opt("offline", "Weights & Biases mode", choices=("off", "offline", "online"))
    wandb_project: str = opt("mexma", "wandb project")
    verbose: bool = opt(False, "also print wandb's and DeepSpeed's own console lines (wandb logs to its files anyway)")
    run_name: str = opt("", "run name (wandb); default: the output directory's name")


@dataclass
class TrainConfig:
    """The resolved configuration of one training run (written to OUTPUT/config.json)."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


SECTIONS = ("data", "optim", "run", "model")


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", f.name).replace("_", "-")


def base_type(tp):
    """int | None -> int; list -> list."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return typing.get_origin(tp) or tp


def section_fields(section: str) -> list[tuple[dataclasses.Field, type]]:
    """(field, base type) of one section, in declaration order."""
    cls = typing.get_type_hints(TrainConfig)[section]
    hints = typing.get_type_hints(cls)
    return [(f, base_type(hints[f.name])) for f in dataclasses.fields(cls)]


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def _check(ok: bool, flag: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"--{flag}: {msg}")


def check_finite(cfg: TrainConfig) -> None:
    """Every float of every section is finite (`--lr inf`, `--eps nan` are refused naming the flag)."""
    for section in SECTIONS:
        for f, _ in section_fields(section):
            value = getattr(getattr(cfg, section), f.name)
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"--{flag_name(f)}: must be a finite number, got {v!r}")


def validate(cfg: TrainConfig) -> None:
    """Range checks; each error names the flag."""
    check_finite(cfg)
    _validate_data(cfg.data)
    _validate_optim(cfg.optim)
    _validate_run(cfg.run)
    _validate_model(cfg)


def _validate_data(d: DataConfig) -> None:
    _check(bool(d.path), "data", "required (a prepared dataset directory)")
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
    _check(d.lang_alpha >= 0, "lang-alpha", f"must be >= 0, got {d.lang_alpha}")
    _check(d.epoch_pairs >= 0, "epoch-pairs", f"must be >= 0, got {d.epoch_pairs}")
    _check(not d.lang_weights or Path(d.lang_weights).is_file(), "lang-weights", f"{d.lang_weights}: no such file")
    _check(d.prefetch >= 0, "prefetch", f"must be >= 0, got {d.prefetch}")
    _check(d.valid_batches >= 0, "valid-batches", f"must be >= 0, got {d.valid_batches}")


def _validate_optim(o: OptimConfig) -> None:
    _check(o.lr > 0, "lr", f"must be > 0, got {o.lr}")
    _check(o.weight_decay >= 0, "weight-decay", f"must be >= 0, got {o.weight_decay}")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "betas", f"two values in [0, 1), got {o.betas}")
    _check(o.eps > 0, "eps", f"must be > 0, got {o.eps}")
    _check(0.0 <= o.warmup_fraction < 1.0, "warmup-fraction", f"must lie in [0, 1), got {o.warmup_fraction}")
    _check(
        0.0 <= o.warmup_start_factor <= 1.0, "warmup-start-factor", f"must lie in [0, 1], got {o.warmup_start_factor}"
    )
    _check(0.0 <= o.min_lr_ratio <= 1.0, "min-lr-ratio", f"must lie in [0, 1], got {o.min_lr_ratio}")
    _check(o.grad_clip >= 0, "grad-clip", f"must be >= 0, got {o.grad_clip}")
    _check(o.grad_accum is None or o.grad_accum > 0, "grad-accum", f"must be > 0, got {o.grad_accum}")


def _validate_run(r: RunConfig) -> None:
    _check(bool(r.output_dir), "output-dir", "required")
    _check(r.max_steps >= 0, "max-steps", f"must be >= 0, got {r.max_steps}")
    _check(r.max_steps > 0 or r.epochs > 0, "epochs", f"must be > 0 when --max-steps is 0, got {r.epochs}")
    _check(r.max_minutes >= 0, "max-minutes", f"must be >= 0, got {r.max_minutes}")
    _check(not r.fit_to_minutes or r.max_minutes > 0, "fit-to-minutes", "needs --max-minutes > 0 (the budget to fit)")
    _check(r.fit_after >= 5, "fit-after", f"must be >= 5 (3 untimed steps + at least 2 timed), got {r.fit_after}")
    _check(
        not r.fit_to_minutes or r.max_steps == 0 or r.max_steps > r.fit_after,
        "fit-to-minutes",
        fit_refusal(r.max_steps, r.fit_after),
    )
    _check(r.save_every >= 0, "save-every", f"must be >= 0, got {r.save_every}")
    _check(r.keep_checkpoints >= 1, "keep-checkpoints", f"must be >= 1, got {r.keep_checkpoints}")
    _check(0 <= r.seed < 2**32, "seed", f"must lie in [0, 2**32), got {r.seed}")
    _check(r.log_every >= 1, "log-every", f"must be >= 1, got {r.log_every}")
    _check(r.valid_every >= -1, "valid-every", f"must be >= -1, got {r.valid_every}")
    _check(r.xsim_every >= 0, "xsim-every", f"must be >= 0, got {r.xsim_every}")
    _check(r.xsim_every == 0 or bool(r.xsim_data), "xsim-data", "required with --xsim-every (a FLORES-layout dir)")
    _check(r.mine_every >= 0, "mine-every", f"must be >= 0, got {r.mine_every}")
    _check(r.mine_every == 0 or bool(r.mine_data), "mine-data", "required with --mine-every (a BUCC-layout dir)")
    _check(r.mine_every == 0 or bool(r.mine_pair.strip(" ,")), "mine-pair", "required with --mine-every, e.g. de-en")
    for metric, every in (("xsim", r.xsim_every), ("mine", r.mine_every)):
        _check(r.best_metric != metric or every > 0, "best-metric", f"{metric} needs --{metric}-every > 0")
    _check(r.max_bad_steps >= 1, "max-bad-steps", f"must be >= 1, got {r.max_bad_steps}")
    _check(r.dist_timeout > 0, "dist-timeout", f"must be > 0 minutes, got {r.dist_timeout}")


def fit_refusal(max_steps: int, fit_after: int) -> str:
    return (
        f"--max-steps {max_steps} is not above --fit-after {fit_after}: the schedule would be fitted after the last "
        "step, and every step would train at the warmup's first lr; raise --max-steps (the upper bound of the fit) or "
        "lower --fit-after"
    )


def _validate_model(cfg: TrainConfig) -> None:
    name = cfg.model.model
    if name not in PRESETS and _looks_like_path(name) and not Path(name).expanduser().exists():
        raise ConfigError(
            f"--model {name}: the path does not exist (give an existing local model directory, a hub name such "
            f"as xlm-roberta-large, or a preset: {', '.join(PRESETS)})"
        )
    if name not in PRESETS and not _looks_like_path(name):
        try:
            check_hub_name(
                name, "--model", f"--model DIR (a local HF model dir) or a preset, random init: {', '.join(PRESETS)}"
            )
        except HubUnreachableError as e:
            raise ConfigError(str(e)) from e
    try:
        cfg.model.validate()
    except ModelConfigError as e:
        bad = next(f for f in dataclasses.fields(ModelConfig) if f.name == e.field)
        raise ConfigError(f"--{flag_name(bad)}: {e}") from e
    # XLM-R positions run from padding_idx + 1 = 2, so a table of P rows holds sequences of P - 2 tokens (514 -> 512)
    positions = cfg.model.max_positions - 2
    _check(
        name not in PRESETS or cfg.data.max_length <= positions,
        "max-length",
        f"{cfg.data.max_length} exceeds the position table "
        f"(--max-positions {cfg.model.max_positions} holds {positions})",
    )


def _looks_like_path(name: str) -> bool:
    """A hub name is `name` or `org/name`; anything absolute, relative-dotted, ~ or deeper is a local path."""
    return name.startswith(("/", "./", "../", "~", ".")) or name.count("/") > 1
