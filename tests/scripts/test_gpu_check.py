"""scripts/gpu_check.py: the --dry-run runs every stage on CPU (so the GPU check cannot rot), stages run in the order
of their value, a failed or timed-out stage never stops the next one and summary.json is written after each, the
wheelhouse is installed into a temporary path the stages see, the real mode refuses a machine without CUDA in one
line, and the figures it reports are computed as their targets define them."""

import json
import subprocess
import sys
import time
import zipfile
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
    assert list(summary["stages"]) == ["train", "bench-step", "bench-kernels", "kernels"]
    assert all(s["status"] == "ok" for s in summary["stages"].values())
    train = summary["stages"]["train"]["result"]
    assert train["loss_last"] < train["loss_first"] and train["time_to_first_step_s"] > 0
    assert train["syncs_per_step"] == {"measured": "not measured", "max": None, "expected": 3}  # CPU: not counted
    assert train["eval"]["languages"]  # export + python -m eval ran on the trained model
    assert summary["stages"]["kernels"]["result"]["passed"] == 2
    assert (ROOT / "kernels" / "BENCHMARKS.md").read_text() == benchmarks  # dry runs write no figures


def _fake_stages(monkeypatch, seen):
    def ok(args, out, clock, result):
        seen.append(json.loads((out / "summary.json").read_text())["stages"] if (out / "summary.json").exists() else {})
        result["x"] = 1

    def broken(args, out, clock, result):
        result["partial"] = 0.5
        raise gpu_check.StageError("it broke")

    monkeypatch.setattr(gpu_check, "STAGES", {"train": broken, "bench-step": ok, "kernels": ok})


def test_a_failed_stage_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    seen = []
    _fake_stages(monkeypatch, seen)
    out = tmp_path / "gc"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--stages", "train,bench-step,kernels"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"].values()] == ["failed", "ok", "ok"]
    train = summary["stages"]["train"]
    assert train["result"] == {"partial": 0.5} and "it broke" in train["error"]  # what it measured is kept
    assert [list(s) for s in seen] == [["train"], ["train", "bench-step"]]  # summary.json written after each stage
    assert not summary["ok"]


def test_a_stage_past_its_limit_is_killed_with_its_children(tmp_path):
    args = gpu_check.parse_args(["--dry-run"])
    pid_file = tmp_path / "child.pid"
    sleeper = "[sys.executable, '-c', 'import time; time.sleep(60)']"
    script = (f"import subprocess, sys, time; p = subprocess.Popen({sleeper}); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")  # fmt: skip
    started = time.time()
    with pytest.raises(gpu_check.StageError, match="killed at its time limit"):
        gpu_check.run([sys.executable, "-c", script], tmp_path / "log", args, gpu_check.Clock(3))
    assert time.time() - started < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the orphaned child is reaped by init shortly after the kill
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"child process {child} of the killed stage is still running")


def test_limits_flag_and_budget(tmp_path, monkeypatch, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--limits", "train=x"]) == 2
    assert "--limits: 'train=x'" in capsys.readouterr().err
    limits = []
    monkeypatch.setattr(gpu_check, "STAGES", {"train": lambda a, o, c, r: limits.append(c.left())})
    gpu_check.main(["--dry-run", "--out", str(tmp_path), "--stages", "train", "--limits", "train=5000"])
    assert 4 * 400 < limits[0] <= 4 * 470  # the stage limit, capped by what is left of the budget (x4 on --dry-run)
    gpu_check.main(["--dry-run", "--out", str(tmp_path), "--stages", "train", "--budget", "100"])
    assert 90 < limits[1] <= 100
    assert sum(gpu_check.LIMITS.values()) <= 480 - 10  # the default set fits 8 minutes with pre-flight


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel holding module gcprobe."""
    path = folder / "gcprobe-0.1-py3-none-any.whl"
    files = {
        "gcprobe/__init__.py": "VALUE = 42\n",
        "gcprobe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: gcprobe\nVersion: 0.1\n",
        "gcprobe-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files["gcprobe-0.1.dist-info/RECORD"] = "".join(f"{n},,\n" for n in [*files, "gcprobe-0.1.dist-info/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.mark.parametrize("with_pip", [True, False])
def test_wheelhouse_goes_to_a_temporary_path_that_stages_see(tmp_path, monkeypatch, with_pip):
    _wheel(tmp_path)
    monkeypatch.setattr(gpu_check, "WHEELS", [])
    monkeypatch.setattr(sys, "path", list(sys.path))
    if not with_pip:  # a node Python without pip: the wheels are unzipped
        real = gpu_check.importlib.util.find_spec
        monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda n: None if n == "pip" else real(n))
    target = gpu_check.install_wheelhouse(str(tmp_path))
    assert (target / "gcprobe" / "__init__.py").is_file() and sys.path[0] == str(target)
    env = gpu_check.env(dry_run=True)
    assert env["PYTHONPATH"].split(":") == [str(ROOT), str(target)]
    probe = subprocess.run([sys.executable, "-c", "import gcprobe; print(gcprobe.VALUE)"], env=env, text=True,
                           capture_output=True, cwd=tmp_path)  # fmt: skip
    assert probe.stdout.strip() == "42"
    with pytest.raises(gpu_check.StageError, match="no \\*.whl files"):
        gpu_check.install_wheelhouse(str(tmp_path / "empty"))


def test_real_mode_without_cuda_exits_non_zero_with_one_line(monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu-check: no CUDA device (torch.cuda.is_available() is False): run on a GPU machine, or --dry-run"]


def test_unknown_stage_names_the_flag(capsys):
    assert gpu_check.main(["--dry-run", "--stages", "kernels,nope"]) == 2
    assert "--stages: unknown ['nope']" in capsys.readouterr().err


def test_loss_figures_need_a_finite_falling_loss(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"split": "train", "loss": x} for x in (5.0, 4.0, 3.0, 2.0)]
    path.write_text("\n".join(json.dumps(r) for r in [*rows, {"split": "valid", "loss": 9.0}]))
    assert gpu_check.loss_figures(path) == {"steps": 4, "loss_first": 4.5, "loss_last": 2.5}
    path.write_text("\n".join(json.dumps({"split": "train", "loss": x}) for x in (2.0, 3.0)))
    with pytest.raises(gpu_check.StageError, match="did not fall"):
        gpu_check.loss_figures(path)
    path.write_text(json.dumps({"split": "train", "loss": float("nan")}))
    with pytest.raises(gpu_check.StageError, match="not finite"):
        gpu_check.loss_figures(path)


def test_speed_figures_time_to_first_step_and_syncs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"split": "train", "step": s, "time": 120 + 0.5 * s, "tokens_per_s": 1000.0 * s} for s in range(1, 9)]
    for r in rows[3:]:
        r["syncs_per_step"] = 4 if r["step"] < 8 else 6
    path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"split": "tr')  # a torn last line
    figures = gpu_check.speed_figures(path, launched=100.0, grad_accum=2)
    assert figures["time_to_first_step_s"] == 20.5
    assert figures["steps_per_s"] == 2.0 and figures["tokens_per_s"] == 6000  # steps 4-8, after 3 warm-up steps
    assert figures["syncs_per_step"] == {"measured": 4, "max": 6, "expected": 4}
    assert gpu_check.speed_figures(tmp_path / "none.jsonl", 0.0, 1)["time_to_first_step_s"] is None


def test_pytest_counts_read_a_cut_off_log():
    text = "tests/k.py::a[x] PASSED [ 10%]\ntests/k.py::b FAILED [ 20%]\ntests/k.py::c SKIPPED (cuda) [ 30%]\ntests/k"
    assert gpu_check.pytest_counts(text) == {"passed": 1, "failed": 1, "skipped": 1, "error": 0,
                                             "failed_tests": ["tests/k.py::b"]}  # fmt: skip


def test_speedups_and_step_figures():
    rows = [
        {"lengths": "l", "tokens": "16384", "H x D": "16x64", "method": m, "fwd+bwd_ms": ms, "peak_MiB": "1"}
        for m, ms in (("block_diag_attention (triton)", "2"), ("varlen_attn (FlashAttention)", "2.5"))
    ]
    assert gpu_check.attention_speedups(rows)[0]["speedup"] == {"varlen_attn (FlashAttention)": 1.25}
    summary = {"variants": {"packed": {"tokens_per_s": 300.0, "peak_mib": 10.0, "mfu": 0.4, "ms": 1.0},
                            "padded": {"tokens_per_s": 100.0, "peak_mib": 40.0, "label": "original"}}}  # fmt: skip
    figures = gpu_check.step_figures(summary)
    assert figures["speedup_vs_padded"] == 3.0 and figures["memory_vs_padded"] == 0.25
    assert figures["variant"] == "packed" and figures["padded_label"] == "original"
    summary["variants"]["packed-ds"] = {"tokens_per_s": 250.0, "peak_mib": 20.0, "mfu": 0.33, "label": "training"}
    ds = gpu_check.step_figures(summary)  # the training configuration is the headline when it was measured
    assert (ds["variant"], ds["label"], ds["mfu"], ds["speedup_vs_padded"]) == ("packed-ds", "training", 0.33, 2.5)
    assert ds["packed_amp"]["mfu"] == 0.4
    row = gpu_check.benchmark_rows({
        "env": {"date": "d", "device": "H200", "torch": "t", "triton": "tr", "cuda": "c", "git": "g", "command": "x"},
        "stages": {"bench-step": {"status": "ok", "seconds": 3.0, "result": figures},
                   "kernels": {"status": "failed", "seconds": 1.0, "result": {"passed": 3}, "error": "boom"}},
    })  # fmt: skip
    assert "| d | H200 | torch t, triton tr, CUDA c | g | bench-step | ok (3 s) |" in row
    assert '| kernels | failed (1 s) | `{"passed":3,"error":"boom"}` |' in row
