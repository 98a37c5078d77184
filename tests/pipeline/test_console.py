"""The training console: ETA on step lines, a closing summary from the run's files, each line once, no wandb run for
a finished run's relaunch, wandb quiet unless --verbose."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

from pipeline.training.console import Eta, format_duration, quiet_others, summary_lines
from pipeline.training.metrics import MetricsLogger
from tests.pipeline.conftest import run_train, train_cmd


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 42, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_eta_uses_this_launchs_pace():
    eta = Eta()
    assert eta(100, 1000.0, 200) == "eta ?"  # a resumed run's first step starts the clock
    assert eta(110, 1020.0, 200) == "eta 3m00s"  # 2 s/step x 90 steps


def _write(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_summary_names_losses_best_xsim_checkpoint_and_export(tmp_path):
    run = tmp_path / "run"
    recs = [{"split": "train", "step": s, "loss": 2.0, "mlm_loss": 1.5, "cls_loss": 0.25, "koleo_loss": -0.5,
             "elapsed_s": 3.0 * s} for s in range(1, 41)]  # fmt: skip
    recs += [{"split": "xsim", "step": 20, "xsim_error_pct": 80.5}, {"split": "xsim", "step": 40, "xsim_error_pct": 82}]
    _write(run, recs)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest").write_text("step_00000040")
    (run / "checkpoints" / "best").write_text("step_00000020")
    lines = summary_lines(run)
    assert lines[0] == (
        "done: 40 steps in 2m00s; final losses (mean of the last 10 steps): loss 2.0000 mlm 1.5000 cls 0.2500 "
        "koleo -0.5000"
    )
    assert lines[1] == "best in-training xsim error: 80.50% at step 20"
    assert lines[2] == f"checkpoint: {run / 'checkpoints' / 'step_00000040'} (best: step_00000020)"
    assert lines[3] == f"next: python -m pipeline.export {run} {run}-hf --tag best"


def test_no_wandb_run_without_a_record(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("pipeline.training.metrics._start_wandb", lambda *a: started.append(a))
    m = MetricsLogger(tmp_path, rank=0, wandb_mode="offline", log_every=1)
    m.close()
    assert started == []
    m = MetricsLogger(tmp_path, rank=0, wandb_mode="offline", log_every=1)
    m.write({"split": "train", "step": 1, "loss": 1.0, "time": 0.0})
    assert len(started) == 1


def test_wandb_is_silent_unless_verbose(monkeypatch):
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    quiet_others(verbose=True)
    assert "WANDB_SILENT" not in os.environ and logging.getLogger("DeepSpeed").level == logging.INFO
    quiet_others(verbose=False)
    assert os.environ["WANDB_SILENT"] == "true" and logging.getLogger("DeepSpeed").level == logging.WARNING


@pytest.fixture
def finished_copy(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_finished_run_relaunched_says_so_once_opens_no_wandb_and_sums_up(prepared, finished_copy):
    proc = run_train(train_cmd(prepared, finished_copy, "--max-steps", "8", "--wandb", "offline"), WANDB_MODE="")
    text = proc.stdout + proc.stderr
    assert text.count("already holds a finished run") == 1
    assert not (finished_copy / "wandb").exists()
    assert "done: 8 steps" in text and f"next: python -m pipeline.export {finished_copy}" in text


def test_long_pair_lists_are_summarised():
    from pipeline.data.sampler import shares_summary

    shares = {f"eng_Latn-x{i:03d}": (i + 1) / 12_246 for i in range(156)}  # 156 pairs, as the offline corpus
    line = shares_summary(shares)
    assert len(line) < 400 and line.count("%") == 8 and "config.json" in line
    assert line.startswith("largest eng_Latn-x155 ") and "smallest" in line
    assert shares_summary({"a-b": 0.75, "c-d": 0.25}) == "a-b 75.00% c-d 25.00%"
