"""Train MEXMA: `deepspeed pipeline/train.py ...`, `torchrun ... pipeline/train.py ...` or `python pipeline/train.py`.

Flags: `--help` (generated from pipeline/config.py). A relaunch with the same --output-dir resumes from the latest
complete checkpoint (--no-resume starts over). docs/training.md has the flags, the file format and the mapping from
the original's command line.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # `deepspeed pipeline/train.py` runs the file as a script: make `pipeline` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.checkpoint import CheckpointError
from pipeline.config import ConfigError, load_ds_config, parse_args, write_run_files
from pipeline.data import DataError
from pipeline.engine import Trainer, TrainingStoppedError


def setup(argv: list[str] | None = None) -> Trainer:
    """Config -> Trainer; rank 0 records the run (config, DeepSpeed JSON, git SHA, manifest hash, tokenizer)."""
    cfg = parse_args(argv)
    trainer = Trainer(cfg, load_ds_config(cfg.run.ds_config))
    if trainer.rank == 0:
        manifest = Path(cfg.data.path) / "manifest.json"
        write_run_files(cfg, trainer.ds_config, hashlib.sha256(manifest.read_bytes()).hexdigest(), trainer.world)
        if (Path(cfg.data.path) / "tokenizer").is_dir():
            shutil.copytree(
                Path(cfg.data.path) / "tokenizer", Path(cfg.run.output_dir) / "tokenizer", dirs_exist_ok=True
            )
    return trainer


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    try:
        setup(argv).train()
    except (ConfigError, DataError, CheckpointError, TrainingStoppedError) as e:
        logging.getLogger("pipeline.train").error("%s", e)
        return 2 if isinstance(e, ConfigError | DataError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
