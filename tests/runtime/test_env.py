"""runtime/env.py: the Makefile's environment applied by the programs themselves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runtime import env


def test_defaults_fill_only_what_is_unset(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    env.apply_defaults()
    assert os.environ["WANDB_MODE"] == "online"  # the user's value wins
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    ext = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    assert ext == env.extensions_dir()
    assert Path.home() / ".cache" not in ext.parents


def test_extensions_dir_in_the_venv_or_the_project(monkeypatch):
    monkeypatch.setattr(sys, "prefix", "/some/venv")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert env.extensions_dir() == Path("/some/venv/torch_extensions")
    monkeypatch.setattr(sys, "prefix", "/usr")
    assert env.extensions_dir() == env.PROJECT_ROOT / ".cache" / "torch_extensions"


def test_makefile_sets_the_same_extensions_dir():
    """The programs' default and the Makefile's agree, so `make` targets and bare commands share one build."""
    makefile = (env.PROJECT_ROOT / "Makefile").read_text()
    assert "TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.venv/torch_extensions" in makefile
