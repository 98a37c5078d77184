"""End-to-end training on CPU: a 2-process DeepSpeed ZeRO-2 run, an overfit run whose loss falls, non-finite steps
skipped and counted, the wall-clock budget, token-budget batches. Each run is a subprocess (its own process group)."""

from __future__ import annotations

import hashlib
import json
import math
import textwrap

import pytest

from pipeline.training.metrics import read_metrics
from tests.pipeline.conftest import ROOT, deepspeed_launcher, run_train, train_cmd

TRAIN_KEYS = {
    "step",
    "loss",
    "mlm_loss",
    "cls_loss",
    "koleo_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "pairs_per_s",
    "time",
    "elapsed_s",
    "skipped",
    "skipped_total",
    "epoch",
    "n_masked",
}
VALID_KEYS = {"step", "loss", "mlm_loss", "cls_loss", "koleo_loss", "acc_src2trg", "acc_trg2src", "pairs"}


@pytest.mark.slow  # 2-rank ZeRO-2 runs in make test: test_world_size_change, test_xsim_train, test_lock
def test_two_process_deepspeed_zero2(prepared, tmp_path):
    """`deepspeed --num_gpus 2 pipeline/train.py` on CPU (gloo): finite losses, per-rank state, records written;
    KoLeo over the all-gathered global batch."""
    out = tmp_path / "ds2"
    launcher = deepspeed_launcher(2)
    flags = "--max-steps 4 --save-every 2 --grad-accum 2 --valid-every 2 --koleo-global".split()
    run_train(train_cmd(prepared, out, *flags, launcher=launcher), timeout=400)
    train = read_metrics(out)
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(TRAIN_KEYS <= set(r) and math.isfinite(r["loss"]) and not r["skipped"] for r in train)
    assert all(r["pairs"] == 8 * 2 * 2 for r in train)  # micro 8 x accumulation 2 x 2 ranks
    valid = read_metrics(out, "valid")
    assert [r["step"] for r in valid] == [2, 4] and all(VALID_KEYS <= set(r) for r in valid)
    assert all(0.0 <= r["acc_src2trg"] <= 1.0 for r in valid)
    ds = json.loads((out / "ds_config.json").read_text())
    assert (ds["train_batch_size"], ds["zero_optimization"]["stage"]) == (32, 2)
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["git_sha"] != ""
    assert info["manifest_sha256"] == hashlib.sha256((prepared / "manifest.json").read_bytes()).hexdigest()
    assert json.loads((out / "config.json").read_text())["model"]["num_layers"] == 2
    ckpt = out / "checkpoints" / "step_00000004"
    assert (out / "checkpoints" / "latest").read_text() == ckpt.name
    assert {p.name for p in ckpt.glob("client_rank*.pt")} == {"client_rank00000.pt", "client_rank00001.pt"}
    assert len(list(ckpt.glob("zero_pp_rank_*_optim_states.pt"))) == 2
    recorded = json.loads((ckpt / "COMPLETE.json").read_text())["files"]  # hashed by the rank that wrote each file
    assert set(recorded) == {p.name for p in ckpt.iterdir() if p.name != "COMPLETE.json"}


def test_overfit_loss_falls(prepared, tmp_path):
    out = tmp_path / "overfit"
    flags = "--max-steps 120 --save-every 0 --lr 3e-3 --warmup-fraction 0.05 --batch-pairs 16 --valid-every -1"
    run_train(train_cmd(prepared, out, *flags.split()))
    losses = [r["loss"] for r in read_metrics(out)]
    assert len(losses) == 120 and all(map(math.isfinite, losses))
    # MLM starts at ln(85) = 4.44 (uniform over the vocabulary); each side uses 40 words, so learning which words
    # occur brings it towards ln(40) = 3.69 within a few epochs of the 256 pairs (16 batches per epoch). At 60 steps
    # the drop is 0.25-0.40 depending on the seed's data order; at 120 steps it is 0.81-0.87 for seeds 0-2, so 0.4
    # holds with margin.
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.4, f"loss did not fall: first 5 mean {first:.3f}, last 5 mean {last:.3f}"


def test_reference_path_gives_the_same_losses(prepared, tiny_run, tmp_path):
    """System-level opt-out check: MEXMA_KERNELS=ref (reference attention and KoLeo everywhere)
    reproduces the default CPU path's 8-step run (same flags as the tiny_run fixture) to fp32 tolerance."""
    out = tmp_path / "ref"
    run_train(train_cmd(prepared, out, *"--max-steps 8 --save-every 0 --valid-every 4".split()), MEXMA_KERNELS="ref")
    for split in ("train", "valid"):
        ref, default = read_metrics(out, split), read_metrics(tiny_run, split)
        assert [r["step"] for r in ref] == [r["step"] for r in default]
        for key in ("loss", "mlm_loss", "cls_loss", "koleo_loss"):
            assert [r[key] for r in ref] == pytest.approx([r[key] for r in default], rel=1e-4, abs=1e-6), key


NAN_AT_MICRO_STEP_3 = textwrap.dedent("""
    import sys, torch
    from pipeline.model import mexma as model
    forward, calls = model.MexmaModel.forward, [0]
    def poisoned(self, **batch):
        out = forward(self, **batch)
        calls[0] += self.training
        if self.training and calls[0] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out
    model.MexmaModel.forward = poisoned
    from pipeline.train import main
    sys.exit(main(sys.argv[1:]))
""")


def test_non_finite_step_is_skipped_and_training_goes_on(prepared, tmp_path):
    out = tmp_path / "nan"
    cmd = train_cmd(prepared, out, "--max-steps", "5", "--save-every", "0", "--valid-every", "-1")
    run_train([cmd[0], "-c", NAN_AT_MICRO_STEP_3] + cmd[2:])
    rows = read_metrics(out)
    assert [r["skipped"] for r in rows] == [False, False, True, False, False]
    assert rows[2]["loss"] == "nan" and rows[2]["grad_norm"] == "inf" and rows[-1]["skipped_total"] == 1
    assert rows[3]["lr"] == rows[2]["lr"]  # a skipped step does not advance the schedule
    assert all(math.isfinite(r["loss"]) for r in rows if not r["skipped"])


def test_diverging_run_stops_with_a_clear_message(prepared, tmp_path):
    out = tmp_path / "diverge"
    flags = "--max-steps 20 --save-every 0 --lr 1e8 --warmup-fraction 0 --max-bad-steps 3 --valid-every -1"
    proc = run_train(train_cmd(prepared, out, *flags.split()), check=False)
    assert proc.returncode == 1
    assert "3 optimizer steps in a row had a non-finite loss (limit --max-bad-steps 3)" in proc.stderr
    assert len(read_metrics(out)) < 20


def test_wall_clock_budget_and_token_batches(prepared, tmp_path):
    """--max-minutes stops early and still checkpoints; --batch-tokens packs under the budget; activation
    checkpointing (applied in pipeline/training/trainer.py) trains."""
    out = tmp_path / "budget"
    flags = "--max-steps 1000 --max-minutes 0.0001 --batch-tokens 400 --max-length 40 --valid-every -1"
    run_train(train_cmd(prepared, out, *flags.split(), "--gradient-checkpointing"))
    rows = read_metrics(out)
    assert 1 <= len(rows) < 1000
    assert all(r["tokens"] <= 400 for r in rows)
    assert (out / "checkpoints" / "latest").read_text() == f"step_{rows[-1]['step']:08d}"


def test_bad_flag_exits_with_the_flag_named(prepared, tmp_path, caplog):
    from pipeline.train import main

    argv = train_cmd(prepared, tmp_path / "x", "--warmup-fraction", "2")[2:]
    assert main(argv) == 2  # the config is checked before any process group or model exists
    assert "--warmup-fraction: must lie in [0, 1)" in caplog.text


@pytest.mark.slow
def test_make_train_command_runs(prepared, tmp_path):
    """The Makefile's `make train` line (tiny preset, 2 processes) on the test data, shortened to 6 steps."""
    out = tmp_path / "make_train"
    launcher = deepspeed_launcher(2)
    args = f"--data {prepared} --output-dir {out} --model tiny --ds-config {ROOT / 'ds_configs/zero2_cpu_fp32.json'}"
    cmd = [
        *launcher,
        str(ROOT / "pipeline/train.py"),
        *args.split(),
        *"--max-steps 6 --save-every 3 --wandb off".split(),
    ]
    run_train(cmd, timeout=600)
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 7))


@pytest.mark.slow
def test_torchrun_two_processes(prepared, tmp_path):
    """The same entry point under torchrun (no DeepSpeed launcher): it joins torchrun's group."""
    from tests.pipeline.conftest import free_port

    out = tmp_path / "torchrun"
    launcher = [str(ROOT / ".venv/bin/torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]
    run_train(train_cmd(prepared, out, *"--max-steps 3 --save-every 0 --valid-every -1".split(), launcher=launcher))
    assert [r["pairs"] for r in read_metrics(out)] == [16, 16, 16]  # 8 pairs x 2 ranks
    assert len(list((out / "checkpoints" / "step_00000003").glob("client_rank*.pt"))) == 2


def test_stale_jit_build_lock_is_cleared(tmp_path, monkeypatch):
    """A SIGKILL while DeepSpeed JIT-loads its CPU shm op leaves torch's build lock; the next launch would poll for
    it forever. init_distributed removes a lock older than 5 minutes and leaves a fresh one (a live build) alone."""
    import os
    import time

    from runtime.jit_lock import clear_stale_jit_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "some_op" / "lock"
    lock.parent.mkdir()
    lock.touch()
    assert not clear_stale_jit_lock("some_op") and lock.exists()
    os.utime(lock, (time.time() - 600, time.time() - 600))
    assert clear_stale_jit_lock("some_op") and not lock.exists()
    assert not clear_stale_jit_lock("some_op")  # no lock at all
