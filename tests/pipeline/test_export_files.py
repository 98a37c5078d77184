"""The exported directory as others meet it: modes by the umask, a stock load with no MISSING report, --help's name."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys

import pytest

from pipeline.export import export_checkpoint
from tests.pipeline.conftest import ROOT, run_env


@pytest.fixture(scope="module")
def exported_022(tiny_run, tmp_path_factory):
    old = os.umask(0o022)
    try:
        return export_checkpoint(str(tiny_run), str(tmp_path_factory.mktemp("export") / "hf"))
    finally:
        os.umask(old)


def test_files_get_the_umask_modes(exported_022):
    from pathlib import Path

    out = Path(exported_022)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    for path in out.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_stock_class_loads_without_missing_report(exported_022, caplog):
    from transformers import XLMRobertaModel
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    with caplog.at_level(logging.INFO):
        model, info = XLMRobertaModel.from_pretrained(exported_022, output_loading_info=True)
    assert model.pooler is not None
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert "MISSING" not in caplog.text


def test_help_names_the_command_as_typed():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.export", "--help"], cwd=ROOT, env=run_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m pipeline.export ")
