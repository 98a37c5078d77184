"""pipeline/data/prefetch.py and the sync-free micro step: batches made ahead in a thread equal batches made in line;
closing rewinds sampler and masking generator to the batches consumed; a run with --prefetch 0 equals the default
run step for step; `Trainer._micro_step` makes no .item() / bool() / int() / float() / tolist() call."""

from __future__ import annotations

import json
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from pipeline.data.collate import MexmaCollator
from pipeline.data.dataset import DataError
from pipeline.data.prefetch import BatchStream
from pipeline.data.sampler import DistributedBatchSampler
from pipeline.training.metrics import read_metrics
from tests.pipeline.conftest import ROOT, run_train, train_cmd

TINY_RUN_FLAGS = ("--max-steps", "8", "--save-every", "2", "--valid-every", "4")  # the tiny_run fixture's flags
SPECIALS = {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 49}


def _rows(idx) -> list[dict]:
    """Deterministic rows for row indices: src/trg ids depend only on the index."""
    rows = []
    for i in idx:
        n = 3 + int(i) % 7
        rows.append({"src_ids": [0, *[(5 + int(i) * k) % 40 + 5 for k in range(n)], 2], "trg_ids": [0, 10 + n, 2]})
    return rows


def _stream(depth: int, read_rows=_rows) -> BatchStream:
    lengths = np.stack([np.arange(64) % 9 + 3, np.full(64, 3)], axis=1)
    sampler = DistributedBatchSampler(lengths, batch_pairs=4, seed=7)
    return BatchStream(sampler, MexmaCollator(SPECIALS, 50, seed=3), read_rows, depth=depth)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_prefetched_batches_equal_batches_made_in_line():
    inline, ahead = _stream(0), _stream(3)
    try:
        for _ in range(40):  # 16 batches per epoch: crosses two epoch boundaries
            x, y = inline.next(), ahead.next()
            assert _same(x.batch, y.batch) and torch.equal(x.counts, y.counts)
            assert x.sampler_state == y.sampler_state and ahead.epoch == inline.epoch
    finally:
        ahead.close()


def test_close_rewinds_to_the_consumed_batches():
    """The thread has made batches 6.. ahead; after close() the sampler and collator states are those right after
    batch 5, so a checkpoint taken now and a new stream continue with batch 6 exactly."""
    reference = _stream(0)
    expected = [reference.next() for _ in range(8)]
    ahead = _stream(2)
    for _ in range(5):
        ahead.next()
    ahead.close()
    assert ahead.sampler.state_dict() == expected[4].sampler_state
    assert torch.equal(ahead.collator.state_dict()["generator"], expected[4].collator_state["generator"])
    again = BatchStream(ahead.sampler, ahead.collator, _rows, depth=2)
    try:
        for want in expected[5:]:
            assert _same(again.next().batch, want.batch)
    finally:
        again.close()


def test_an_error_while_reading_is_raised_by_next():
    def broken(idx):
        raise DataError("shard train/data-00001.arrow unreadable")

    stream = _stream(2, broken)
    with pytest.raises(DataError, match="data-00001.arrow unreadable"):
        stream.next()
    stream.close()


def test_prefetch_on_and_off_give_identical_losses(prepared, tiny_run, tmp_path):
    """The tiny_run fixture (default --prefetch 2, checkpoints every 2 steps, validation every 4) against the same
    command with --prefetch 0: every train and valid record equal (bit for bit on CPU fp32)."""
    out = tmp_path / "no_prefetch"
    run_train(train_cmd(prepared, out, *TINY_RUN_FLAGS, "--prefetch", "0"))
    for split, keys in (
        ("train", ("loss", "mlm_loss", "cls_loss", "koleo_loss", "grad_norm", "n_masked", "tokens")),
        ("valid", ("loss", "acc_src2trg", "acc_trg2src")),
    ):
        got, want = read_metrics(out, split), read_metrics(tiny_run, split)
        assert [r["step"] for r in got] == [r["step"] for r in want]
        for key in keys:
            assert [r[key] for r in got] == [r[key] for r in want], (split, key)


COUNT_SYNCS = textwrap.dedent("""
    import json, sys, threading, torch
    from pathlib import Path
    from pipeline.training import trainer as engine
    from pipeline.train import setup

    ROOT = Path(sys.argv[1]).resolve()
    OURS = [str(ROOT / d) for d in ("pipeline", "kernels")]
    calls, inside = [], [False]

    def counting(name, original):
        def wrapper(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename  # the prefetch thread's host-only work is not counted
            main = threading.current_thread() is threading.main_thread()
            if inside[0] and main and any(caller.startswith(d) for d in OURS):
                calls.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *a, **k)
        return wrapper

    for name in ("item", "__bool__", "__int__", "__float__", "__index__", "tolist"):
        setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    micro = engine.Trainer._micro_step
    def watched(self, mb):
        inside[0] = True
        try:
            return micro(self, mb)
        finally:
            inside[0] = False
    engine.Trainer._micro_step = watched
    trainer = setup(sys.argv[2:])
    trainer.train()
    Path(trainer.out, "syncs.json").write_text(json.dumps(calls))
""")


def test_micro_step_makes_no_host_sync(prepared, tmp_path):
    """Tensor.item / __bool__ / __int__ / __float__ / __index__ / tolist called from the project's code (pipeline/,
    kernels/: engine, model, losses, kernels) while `_micro_step` runs: none, over 3 steps with accumulation 2 and
    a non-finite-safe loss. (DeepSpeed's own overflow check is the one sync a step costs; it is not counted.)"""
    out = tmp_path / "syncs"
    cmd = train_cmd(prepared, out, "--max-steps", "3", "--grad-accum", "2", "--save-every", "0", "--valid-every", "-1")
    run_train([sys.executable, "-c", COUNT_SYNCS, str(ROOT), *cmd[2:]])
    assert json.loads((out / "syncs.json").read_text()) == []
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def test_metrics_read_device_values_once_per_log_interval(tmp_path, monkeypatch):
    """Train records holding tensors are written every --log-every steps (one tolist per flush), at a skipped step,
    before another split's record and on flush(); the file reads as if written step by step."""
    from pipeline.training.metrics import MetricsLogger

    reads = []
    tolist = torch.Tensor.tolist
    here = threading.get_ident()  # count this thread's reads only (another test's prefetch thread may still run)
    monkeypatch.setattr(
        torch.Tensor, "tolist", lambda self: (threading.get_ident() == here and reads.append(1)) or tolist(self)
    )
    logger = MetricsLogger(tmp_path, rank=0, wandb_mode="off", log_every=3)

    def record(step, skipped=False):
        sums = torch.tensor([2.0 * step, 10.0 * step], dtype=torch.float64)
        return {"split": "train", "step": step, "loss": sums[0] / 2, "tokens": sums[1], "skipped": skipped}

    for step in (1, 2):
        logger.write(record(step))
    assert read_metrics(tmp_path) == [] and reads == []
    logger.write(record(3))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3] and len(reads) == 1
    logger.write(record(4))
    logger.write(record(5, skipped=True))  # a skipped step is written at once
    logger.write(record(7))
    logger.write({"split": "valid", "step": 7, "loss": 0.5})  # keeps the order
    logger.write(record(8))
    logger.flush()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 7, 8] and len(reads) == 4
    assert [r["loss"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0]
    assert rows[-1]["tokens"] == 80 and isinstance(rows[-1]["tokens"], int)
    assert [r["step"] for r in read_metrics(tmp_path, "valid")] == [7]
