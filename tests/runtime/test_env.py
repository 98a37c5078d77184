"""runtime/env.py: the Makefile's environment applied by the programs themselves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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


def test_cuda_allocator_expands_unless_the_user_configured_it(monkeypatch):
    for key in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(key, raising=False)
    env.apply_defaults()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    env.apply_defaults()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "backend:native")  # the newer name counts as the user's choice
    env.apply_defaults()
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_cpu_threads_split_between_the_ranks_of_a_node(monkeypatch):
    import torch

    from runtime import collectives

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 GPUs, 8 ranks on this node
    assert collectives.cap_cpu_threads() == 2 and set_to == [2]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert collectives.cap_cpu_threads() == 1  # never 0
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # the user's choice stands
    assert collectives.cap_cpu_threads() is None and set_to == [2, 1]


def test_the_start_up_line_names_the_accelerator_and_its_source(monkeypatch):
    from runtime import collectives

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    line = collectives.accelerator_line("cuda", "cpu:gloo,cuda:nccl", 8)
    assert line == "accelerator cuda (detected by DeepSpeed: no DS_ACCELERATOR set); 8 process(es); " \
        "process group cpu:gloo,cuda:nccl"  # fmt: skip
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert collectives.accelerator_line("cpu", "gloo", 2).startswith("accelerator cpu (DS_ACCELERATOR=cpu); 2 ")


@pytest.mark.filterwarnings("ignore:Cannot enable progress bars")  # the hub's variable, read at its import, wins
def test_hugging_face_progress_bars_are_off_even_after_their_libraries_were_imported(monkeypatch):
    """The default reaches transformers' "Loading weights" bar when transformers / huggingface_hub were imported
    before apply_defaults (they read the variable at import); a user's own value is left alone."""
    import transformers.utils.logging as tl
    from huggingface_hub import utils as hub

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "restore me")  # so that teardown restores the original state
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    tl.enable_progress_bar()
    try:
        env.apply_defaults()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert not tl.is_progress_bar_enabled() and hub.are_progress_bars_disabled()
        tl.enable_progress_bar()
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
        env.apply_defaults()
        assert tl.is_progress_bar_enabled()  # the user's value wins
    finally:
        tl.enable_progress_bar()
