"""Train MEXMA: `deepspeed pipeline/train.py ...`, `torchrun ... pipeline/train.py ...` or `python pipeline/train.py`.

Flags: `--help` (generated from pipeline/config/). A relaunch with the same --output-dir resumes from the latest
complete checkpoint under the relaunch rules of pipeline/training/runrecord.py (--no-resume starts over, moving the
old run aside). docs/training.md has the flags, the file format and the mapping from the original's command line.

Exit codes: 0 done (or already done); 1 stopped while training (non-finite losses, a checkpoint save failed);
2 refused before anything changed on disk (bad flag, config file, DeepSpeed JSON or dataset, output directory locked
by another run, a relaunch that changes what cannot change, checkpoints that no longer verify).
"""

from __future__ import annotations

import logging
import sys

from eval.mine_hook import MineHook
from eval.train_hook import XsimHook
from pipeline.config import ConfigError, load_ds_config, parse_args
from pipeline.data.dataset import DataError
from pipeline.training.checkpoint import CheckpointError, NoUsableCheckpointError
from pipeline.training.console import configure_logging, env_rank, log_summary, quiet_others
from pipeline.training.lock import OutputLockedError
from pipeline.training.runrecord import RelaunchError
from pipeline.training.trainer import Trainer, TrainingStoppedError
from runtime import collectives
from runtime.env import apply_defaults

REFUSALS = (ConfigError, DataError, RelaunchError, OutputLockedError, NoUsableCheckpointError)


def setup(argv: list[str] | None = None) -> Trainer:
    """Config -> Trainer (rank 0 holds OUTPUT/.lock); the run records are written by `Trainer.resume`, after the
    relaunch checks."""
    cfg = parse_args(argv)
    quiet_others(cfg.run.verbose)
    return Trainer(cfg, load_ds_config(cfg.run.ds_config), hooks=[XsimHook.for_run, MineHook.for_run])


def main(argv: list[str] | None = None) -> int:
    apply_defaults()  # read when used: DeepSpeed's op build, the first tokenizer batch, wandb.init
    configure_logging(env_rank())
    trainer = None
    try:
        trainer = setup(argv)
        trainer.train()
        if trainer.rank == 0:
            log_summary(trainer.out, logging.getLogger("pipeline.train"))
        collectives.finish()  # every rank got here: the group's threads end before the interpreter tears down
    except (*REFUSALS, CheckpointError, TrainingStoppedError) as e:
        logging.getLogger("pipeline.train").error("%s", e)
        return 2 if isinstance(e, REFUSALS) else 1
    finally:
        if trainer is not None and trainer.lock is not None:
            trainer.lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
