"""Documented dataclass fields: the one way a config field carries its help text.

`opt(default, help, **meta)` puts the help (and optional `flag`, `choices`, `nargs`, `elem`) into the field's
metadata. `--help` (pipeline/config/cli.py) and the flag table in docs/training.md
(`python -m pipeline.config --markdown`) both read it from there, so the two cannot drift apart.
Kept outside the `pipeline.config` package so `pipeline.model.mexma` can use it without an import cycle.
"""

from __future__ import annotations

import copy
from dataclasses import field


def opt(default, help: str, **meta):  # noqa: A002 - `help` reads like argparse's keyword
    """A config field with its help text (and optional `flag`, `choices`, `nargs`, `elem`) in the metadata."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})
