"""Two processes (gloo on CPU, each encoding a share of the languages) give the one-process result."""

import json
import os
import socket

import torch.multiprocessing as mp

from eval.cli import main
from eval.shares import plan
from tests.eval.conftest import write_augmented


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ["OMP_NUM_THREADS"] = "1"
    if main(argv) != 0:
        raise SystemExit(f"rank {rank} failed")
    # The results are written and the group destroyed. A gloo thread still joinable at interpreter teardown
    # intermittently aborts the process ("terminate called without an active exception", SIGABRT; root cause open,
    # seen in 2 of about 6 full-suite runs, two tests): leave without the teardown so the comparison is tested.
    os._exit(0)


def test_plan_balances_by_size():
    shares = plan({"a": 10, "b": 9, "c": 5, "d": 4, "e": 1}, 2)
    assert shares == [["a", "d", "e"], ["b", "c"]]
    assert plan({"a": 1}, 3) == [["a"], [], []]


def test_two_processes_equal_one(tiny_model, flores, tmp_path):
    write_augmented(flores)
    args = ["--model", str(tiny_model), "--flores", str(flores), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    mp.spawn(_rank_main, args=(2, _free_port(), [*args, "--out", str(tmp_path / "two")]), nprocs=2, join=True)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two.pop("timing")["world_size"] == 2 and one.pop("timing")["world_size"] == 1
    assert one == two
