"""Resuming on another number of ranks: 2 ranks for 10 steps, 1 rank with --grad-accum 2 for 10,
2 ranks again for 10, against an uninterrupted 2-rank run of 30 steps (16 steps per epoch: crosses an epoch).

Same rows per step by construction (the sampler's global plan, tested exactly in test_sampler.py) and the same
masking (keyed by the global micro batch); dropout off so that nothing depends on which rank computes a micro batch.
What remains is the order of fp32 sums: 2 ranks average two micro batches' gradients in an all-reduce, 1 rank
accumulates them in its gradient buffers; ZeRO-2's partitioned Adam state is re-assembled from the universal
checkpoint. Those reorderings change gradients at fp32 rounding level (~1e-7 relative), which Adam's update can
amplify over 20 steps, so losses are compared at rtol 1e-5 (measured: 1.1e-7, docs/training.md); a wrong row, mask
or optimizer state moves the loss by 1e-3 or more (a different row order gave 1e-2).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.config import ConfigError, parse_args, resolve_ds_config
from pipeline.training.metrics import read_metrics
from tests.pipeline.conftest import deepspeed_launcher, run_train, train_cmd

CONSTANT_LR = ("--warmup-fraction", "0", "--min-lr-ratio", "1", "--valid-every", "-1", "--save-every", "5")
NO_DROPOUT = ("--hidden-dropout", "0", "--head-dropout", "0")
RTOL = 1e-5


def _cmd(data, out, steps: int, world: int, gas: int):
    args = ("--max-steps", str(steps), "--grad-accum", str(gas), *CONSTANT_LR, *NO_DROPOUT)
    cmd = train_cmd(data, out, *args, launcher=deepspeed_launcher(world) if world > 1 else None)
    return cmd


def _losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out, "train")}


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("ws") / "uninterrupted"
    run_train(_cmd(prepared, out, 30, world=2, gas=1), timeout=600)
    return out


def test_resume_on_one_rank_then_two_follows_the_uninterrupted_run(prepared, uninterrupted, tmp_path):
    out = tmp_path / "changed"
    run_train(_cmd(prepared, out, 10, world=2, gas=1), timeout=600)
    one = run_train(_cmd(prepared, out, 20, world=1, gas=2), timeout=600)
    assert "converted" in one.stderr and "universal" in one.stderr  # the conversion is logged
    assert not list((out / "checkpoints" / "step_00000010").glob("*universal*"))  # the original is untouched
    run_train(_cmd(prepared, out, 30, world=2, gas=1), timeout=600)
    ref, got = _losses(uninterrupted), _losses(out)
    assert sorted(got) == list(range(1, 31))
    worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
    print(f"largest relative loss difference over 30 steps: {worst:.2e}")
    assert worst < RTOL, {s: (ref[s], got[s]) for s in ref if abs(got[s] - ref[s]) > RTOL * abs(ref[s])}
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2


def test_a_grad_accum_that_changes_the_global_batch_exits_2_and_changes_nothing(uninterrupted, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    proc = run_train(_relaunch(out, gas=1), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--grad-accum 1" in proc.stderr and "needs --grad-accum 2" in proc.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


def _relaunch(out, gas: int) -> list[str]:
    data = json.loads((out / "run_info.json").read_text())["data"]
    return _cmd(Path(data), out, 40, world=1, gas=gas)


def _previous(micro=8, gas=1, world=2) -> dict:
    return {"micro": micro, "gas": gas, "world_size": world}


@pytest.mark.parametrize(("world", "gas", "expected"), [(1, None, 4), (4, None, 1), (2, 2, 2), (1, 4, 4)])
def test_the_global_batch_is_kept_through_the_accumulation(world, gas, expected):
    args = ["--data", "d", "--output-dir", "o", "--batch-pairs", "8"] + (["--grad-accum", str(gas)] if gas else [])
    ds = resolve_ds_config(parse_args(args), {}, world, _previous(gas=2, world=2))
    assert ds["gradient_accumulation_steps"] == expected and ds["train_batch_size"] == 8 * 2 * 2
    assert ds.get("checkpoint", {}).get("load_universal", False) is (world != 2)


def test_a_global_batch_that_cannot_be_kept_names_the_arithmetic_and_the_flags():
    with pytest.raises(ConfigError, match=r"1 x 2 / 3 is not an integer.*world size in \[1, 2\]"):
        resolve_ds_config(parse_args(["--data", "d", "--output-dir", "o", "--batch-pairs", "8"]), {}, 3, _previous())
    with pytest.raises(ConfigError, match=r"--grad-accum 3: .* needs --grad-accum 1 \(1 x 2 / 2\)"):
        resolve_ds_config(
            parse_args(["--data", "d", "--output-dir", "o", "--batch-pairs", "8", "--grad-accum", "3"]),
            {},
            2,
            _previous(world=2),
        )
    with pytest.raises(ConfigError, match="keep --batch-pairs 8"):
        resolve_ds_config(parse_args(["--data", "d", "--output-dir", "o", "--batch-pairs", "16"]), {}, 1, _previous())
    same = resolve_ds_config(parse_args(["--data", "d", "--output-dir", "o", "--batch-pairs", "8"]), {}, 2, _previous())
    assert "checkpoint" not in same  # same world size: the ordinary checkpoint


def test_a_conversion_of_a_same_named_checkpoint_of_another_run_is_not_reused(tmp_path):
    """--no-resume sets the old checkpoints aside but a later run reaches the same step_N names: the universal copy
    records the sha256 of its source's COMPLETE.json and is redone when that differs."""
    from pipeline.training.checkpoint import UNIVERSAL_DONE, CheckpointManager

    manager = CheckpointManager(tmp_path)
    (manager.root / "step_00000010").mkdir()
    (manager.root / "step_00000010" / "COMPLETE.json").write_text('{"tag": "step_00000010", "run": 1}')
    done = tmp_path / "universal" / "step_00000010"
    done.mkdir(parents=True)
    record = {"source_complete_sha256": manager._complete_sha("step_00000010")}
    (done / UNIVERSAL_DONE).write_text(json.dumps(record))
    assert manager._universal_current("step_00000010", done.parent)
    (manager.root / "step_00000010" / "COMPLETE.json").write_text('{"tag": "step_00000010", "run": 2}')
    assert not manager._universal_current("step_00000010", done.parent)
