"""`python -m pipeline.plot RUN`: curves of any run's metrics.jsonl (a real few-step run and a synthetic one)."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline.plot import main, moving_average, plot_run
from tests.pipeline.conftest import ROOT, run_env

PNG = b"\x89PNG\r\n\x1a\n"


def test_curves_of_a_few_step_run(tiny_run, tmp_path):
    out = plot_run(tiny_run, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 20_000


def test_xsim_records_are_drawn_and_cli_writes_beside_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"split": "train", "step": s, "loss": 5.0 - s / 10, "mlm_loss": 4.0, "cls_loss": 0.1, "koleo_loss": -1.0,
             "lr": 1e-3 * s / 20, "tokens_per_s": 1000.0 + s, "elapsed_s": 2.0 * s} for s in range(1, 21)]  # fmt: skip
    recs += [{"split": "xsim", "step": s, "xsim_error_pct": 90.0 - s} for s in (10, 20)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main([str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"curves: {run / 'curves.png'}"
    assert (run / "curves.png").read_bytes()[:8] == PNG


def test_a_dir_without_metrics_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.plot", str(tmp_path)], cwd=ROOT, env=run_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "metrics.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def test_moving_average_is_trailing():
    assert moving_average([2.0, 4.0, 6.0, 8.0], 2) == [2.0, 3.0, 5.0, 7.0]
