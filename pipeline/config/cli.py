"""The command line and config files of training, generated from the schema (schema.py).

Precedence: built-in default < `--config FILE` < command-line flag. One flag per leaf field, its help read from the
field's metadata (`pipeline.fields.opt`); `flag_table()` renders the same help as the Markdown table in
docs/training.md (`python -m pipeline.config --markdown`), and a test keeps the two equal. `--recipe` (recipes.py)
sits under the file: default < recipe < file < flag.
"""

from __future__ import annotations

import argparse
import json
import math
import typing
from pathlib import Path

from pipeline.config.recipes import load_recipe
from pipeline.config.schema import (
    SECTIONS,
    ConfigError,
    TrainConfig,
    default_of,
    flag_name,
    section_fields,
    validate,
)

RESOLVED = "resolved"


def _help(f) -> str:
    return f.metadata.get("help", "")


def build_parser() -> argparse.ArgumentParser:
    """One flag per leaf field; defaults are SUPPRESSed so that only the flags a user typed override the file."""
    p = argparse.ArgumentParser(
        prog="deepspeed pipeline/train.py",
        description="Train a MEXMA encoder with DeepSpeed ZeRO-2 (launched by deepspeed, torchrun or python).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML or JSON file with sections data/optim/run/model (flags override it)")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    for section in SECTIONS:
        group = p.add_argument_group(section)
        for f, tp in section_fields(section):
            group.add_argument(f"--{flag_name(f)}", **_argument(section, f, tp))
    return p


def _argument(section: str, f, tp) -> dict:
    kw = {"dest": f"{section}.{f.name}", "help": f"{_help(f)} (default: {default_of(f)!r})"}
    if tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
    else:
        kw["metavar"] = flag_name(f).upper().replace("-", "_")
    if tp is list or tp is tuple:
        kw.update(nargs=f.metadata.get("nargs", "+"), type=f.metadata.get("elem", str))
    elif tp is not bool:
        kw["type"] = tp if tp in (int, float, str) else str
    if "choices" in f.metadata:
        kw["choices"] = f.metadata["choices"]
    return kw


def flag_table() -> str:
    """Markdown table of every flag (section, flag, default, help): the docs' copy of `--help`."""
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for section in SECTIONS:
        for f, tp in section_fields(section):
            flag = f"--{flag_name(f)}" + ("" if tp is not bool else f" / --no-{flag_name(f)}")
            bar = "\\|"
            choices = f" ({f' {bar} '.join(f.metadata['choices'])})" if "choices" in f.metadata else ""
            shown = "required" if flag in ("--data", "--output-dir") else f"`{default_of(f)!r}`"
            rows.append(f"| `{flag}` | {shown} | {section}: {_help(f).replace('|', bar)}{choices} |")
    return "\n".join(rows) + "\n"


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
    raw.pop(RESOLVED, None)  # OUTPUT/config.json's start-up measurements (backends, pair shares): not settings
    for section, values in raw.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(
                f"--config {path}: unknown section {section!r} (expected a mapping under one of {SECTIONS})"
            )
        known = {f.name for f, _ in section_fields(section)}
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
        for f, tp in section_fields(section):
            if f.name in given and given[f.name] is not None and tp in (int, float):
                given[f.name] = _coerce(f, tp, given[f.name])
        parts[section] = hints[section](**given)
    cfg = TrainConfig(**parts)
    validate(cfg)
    return cfg


def _coerce(f, tp, value):
    try:
        if tp is int:
            as_float = float(value)
            if not math.isfinite(as_float) or as_float != int(as_float):
                raise ValueError
            return int(as_float)
        return tp(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"--{flag_name(f)}: expected {tp.__name__}, got {value!r}") from None


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line (+ optional --config file) -> validated TrainConfig."""
    ns = vars(build_parser().parse_args(argv))
    values: dict = load_config_file(ns.pop("config")) if "config" in ns else {}
    ns.pop("local_rank", None)
    for key, value in ns.items():
        section, name = key.split(".", 1)
        values.setdefault(section, {})[name] = value
    recipe = values.get("run", {}).get("recipe")
    if recipe:  # under the file and the flags
        for section, given in load_recipe(recipe).items():
            values[section] = {**given, **values.get(section, {})}
    return config_from_dict(values)
