"""scripts/gpu_check.py: the --dry-run runs every stage on CPU (so the GPU check cannot rot), the real mode refuses
a machine without CUDA in one line, and the figures it reports are computed as the issue's targets read."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import gpu_check

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_runs_every_stage(tmp_path):
    out = tmp_path / "gpu-check"
    benchmarks = (ROOT / "kernels" / "BENCHMARKS.md").read_text()
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["dry_run"]
    assert list(summary["stages"]) == ["kernels", "bench-kernels", "bench-step", "train"]
    assert all(s["status"] == "ok" for s in summary["stages"].values())
    train = summary["stages"]["train"]["result"]
    assert train["loss_last"] < train["loss_first"] and train["syncs_per_step"] == "not measured"
    assert train["eval"]["languages"]  # export + python -m eval ran on the trained model
    assert (ROOT / "kernels" / "BENCHMARKS.md").read_text() == benchmarks  # dry runs write no figures


def test_real_mode_without_cuda_exits_non_zero_with_one_line(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", "runs/gpu-check-nocuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu-check: no CUDA device (torch.cuda.is_available() is False): run on a GPU machine, or --dry-run"]


def test_unknown_stage_names_the_flag(capsys):
    assert gpu_check.main(["--dry-run", "--stages", "kernels,nope"]) == 2
    assert "--stages: unknown ['nope']" in capsys.readouterr().err


def test_loss_figures_need_a_finite_falling_loss(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"split": "train", "loss": x, "syncs_per_step": 3} for x in (5.0, 4.0, 3.0, 2.0)]
    path.write_text("\n".join(json.dumps(r) for r in [*rows, {"split": "valid", "loss": 9.0}]))
    assert gpu_check.loss_figures(path) == {"steps": 4, "loss_first": 4.5, "loss_last": 2.5, "syncs_per_step": 3}
    path.write_text("\n".join(json.dumps({"split": "train", "loss": x}) for x in (2.0, 3.0)))
    with pytest.raises(gpu_check.StageError, match="did not fall"):
        gpu_check.loss_figures(path)
    path.write_text(json.dumps({"split": "train", "loss": float("nan")}))
    with pytest.raises(gpu_check.StageError, match="not finite"):
        gpu_check.loss_figures(path)


def test_speedups_and_step_figures():
    rows = [
        {"lengths": "l", "tokens": "16384", "H x D": "16x64", "method": m, "fwd+bwd_ms": ms, "peak_MiB": "1"}
        for m, ms in (("block_diag_attention (triton)", "2"), ("varlen_attn (FlashAttention)", "2.5"))
    ]
    assert gpu_check.attention_speedups(rows)[0]["speedup"] == {"varlen_attn (FlashAttention)": 1.25}
    summary = {"variants": {"packed": {"tokens_per_s": 300.0, "peak_mib": 10.0, "mfu": 0.4, "ms": 1.0},
                            "padded": {"tokens_per_s": 100.0, "peak_mib": 40.0}}}  # fmt: skip
    figures = gpu_check.step_figures(summary)
    assert figures["speedup_vs_padded"] == 3.0 and figures["memory_vs_padded"] == 0.25
    row = gpu_check.benchmark_rows({
        "env": {"date": "d", "device": "H200", "torch": "t", "triton": "tr", "cuda": "c", "git": "g", "command": "x"},
        "stages": {"bench-step": {"status": "ok", "seconds": 3.0, "result": figures}},
    })  # fmt: skip
    assert "| d | H200 | torch t, triton tr, CUDA c | g | bench-step | ok (3 s) |" in row
