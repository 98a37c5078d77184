"""One typed training config, split by concern:

- `schema.py`: the dataclasses (`TrainConfig` = data + optim + run + the model's `ModelConfig`), a help text per
  field (`pipeline.fields.opt`), range checks that name the flag;
- `cli.py`: the command line and `--config FILE` generated from the schema, and the docs' flag table;
- `ds_json.py`: the DeepSpeed JSON, its "auto" values and the batch arithmetic;
- `records.py`: the run records written beside the checkpoints.

Precedence: built-in default < `--config FILE` < command-line flag. The file format mirrors the sections:
`{"data": {...}, "optim": {...}, "run": {...}, "model": {...}}` with the field names.
"""

from pipeline.config.cli import build_parser, config_from_dict, flag_table, load_config_file, parse_args
from pipeline.config.ds_json import REFERENCE_GRAD_ACCUM, REFERENCE_MICRO_BATCH, load_ds_config, resolve_ds_config
from pipeline.config.records import git_sha, write_run_files
from pipeline.config.schema import (
    SECTIONS,
    ConfigError,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    to_dict,
    validate,
)

__all__ = [
    "REFERENCE_GRAD_ACCUM",
    "REFERENCE_MICRO_BATCH",
    "SECTIONS",
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "build_parser",
    "config_from_dict",
    "flag_table",
    "git_sha",
    "load_config_file",
    "load_ds_config",
    "parse_args",
    "resolve_ds_config",
    "to_dict",
    "validate",
    "write_run_files",
]
