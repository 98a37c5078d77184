"""`python -m data_prep` on the console: -q hides progress bars; a hub tokenizer offline fails in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.data_prep.helpers import sentence_pairs, write_tsv

ROOT = Path(__file__).resolve().parents[2]


def _prep(tmp_path: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    tsv = write_tsv(tmp_path / "pairs.tsv", sentence_pairs(200))
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "data_prep", "--source", f"tsv:{tsv}", "--out", out, "--workers", "1"]
    run_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    run_env.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, env=run_env, cwd=ROOT, timeout=120)


def test_quiet_prints_no_progress_bar(tmp_path):
    res = _prep(tmp_path, "--train-tokenizer", "100", "-q")
    assert res.returncode == 0, res.stderr
    assert "Saving the dataset" not in res.stderr and "it/s" not in res.stderr and "%|" not in res.stderr
    assert res.stdout.count("\n") == 1  # the summary line only


def test_hub_tokenizer_offline_fails_at_once_naming_alternatives(tmp_path):
    res = _prep(tmp_path, "--tokenizer", "xlm-roberta-large", env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "--tokenizer xlm-roberta-large" in lines[0] and "--train-tokenizer" in lines[0]
    assert not (tmp_path / "out").exists()
