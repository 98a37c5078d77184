"""runtime/ds_ops.py: DeepSpeed's op build said once with its time, its print hidden; the non-deprecated all-gather."""

from __future__ import annotations

import logging
import types

import torch.distributed as dist

from runtime import ds_ops


def test_build_is_announced_timed_and_its_print_hidden(monkeypatch, caplog, capsys):
    monkeypatch.setattr(ds_ops, "op_built", lambda name=ds_ops.SHM_OP: False)
    with caplog.at_level(logging.INFO, logger="pipeline.train"), ds_ops.cpu_op_build(rank=0):
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
    assert capsys.readouterr().out == ""
    assert "building DeepSpeed's CPU communication op" in caplog.text and "first run only" in caplog.text
    assert "DeepSpeed's CPU op built in " in caplog.text


def test_verbose_keeps_the_print_and_other_ranks_say_nothing(monkeypatch, caplog, capsys):
    monkeypatch.setattr(ds_ops, "op_built", lambda name=ds_ops.SHM_OP: True)
    with caplog.at_level(logging.INFO, logger="pipeline.train"), ds_ops.cpu_op_build(rank=1, verbose=True):
        print("built successfully")
    assert "built successfully" in capsys.readouterr().out and caplog.text == ""


def test_all_gather_goes_to_all_gather_single(monkeypatch):
    from deepspeed.comm import comm

    backend = types.SimpleNamespace(all_gather_function=dist.all_gather_into_tensor)
    monkeypatch.setattr(comm, "cdb", backend)
    assert ds_ops.use_all_gather_single()
    assert backend.all_gather_function is dist.all_gather_single
    monkeypatch.setattr(comm, "cdb", None)
    assert not ds_ops.use_all_gather_single()
