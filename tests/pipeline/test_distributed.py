"""runtime/collectives.py: the only module calling collectives; device selection before the process group, the
mixed gloo/nccl backend, the timeout flag, once-jobs per node and the shared output-directory check.

No GPU here: torch.cuda and DeepSpeed's accelerator are monkeypatched where the CUDA branch is checked; the
collectives themselves run on 2 spawned CPU processes (gloo).
"""

from __future__ import annotations

import ast
import json
import os
import socket
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from runtime import collectives, devices, shared_dir, sync_debug

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("pipeline", "eval", "scripts", "data_prep", "kernels", "runtime")
ALLOWED = {"runtime/collectives.py"}
COLLECTIVES = {
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "all_gather_into_tensor",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "recv",
    "isend",
    "irecv",
    "init_process_group",
    "destroy_process_group",
    "init_distributed",
}
DIST_MODULES = ("torch.distributed", "deepspeed.comm")


def _dotted(node: ast.AST) -> str:
    """`a.b.c` of a Name/Attribute chain ('' for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_dist_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in DIST_MODULES)


def direct_collectives(source: str) -> list[str]:
    """Collective calls / imports of torch.distributed (or deepspeed.comm) in `source`, as 'line: text'."""
    tree = ast.parse(source)
    aliases = set(DIST_MODULES)  # names bound to a distributed module: dist, torch.distributed, ...
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if _is_dist_module(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if _is_dist_module(full) and a.name not in COLLECTIVES:
                    aliases.add(a.asname or a.name)  # from torch import distributed as dist
                elif _is_dist_module(node.module) and a.name in COLLECTIVES:
                    found.append(f"{node.lineno}: from {node.module} import {a.name}")
        elif isinstance(node, ast.Assign) and _is_dist_module(_dotted(node.value)):
            aliases |= {t.id for t in node.targets if isinstance(t, ast.Name)}  # dist = torch.distributed
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES:
            owner = _dotted(node.func.value)
            if owner in aliases or _is_dist_module(owner):
                found.append(f"{node.lineno}: {owner}.{node.func.attr}(...)")
    return found


def test_detector_finds_every_spelling_of_a_collective():
    snippets = {
        "import torch.distributed as dist\ndist.all_reduce(x)": 1,
        "import torch\ntorch.distributed.barrier()": 1,
        "from torch import distributed\ndistributed.broadcast_object_list(b, src=0)": 1,
        "import torch\nd = torch.distributed\nd.all_gather_object(p, o)": 1,
        "from torch.distributed import barrier": 1,
        "from torch.distributed.nn.functional import all_gather": 1,
        "from deepspeed import comm as dist\ndist.all_reduce(t)": 1,
        "import torch.distributed as dist\nr = dist.get_rank(); ok = dist.is_initialized()": 0,
        "from runtime import collectives\ncollectives.all_reduce(t)": 0,
    }
    for source, n in snippets.items():
        assert len(direct_collectives(source)) == n, source


def test_no_module_calls_a_collective_directly():
    """Every collective of training, validation, checkpointing and eval goes through runtime/collectives.py."""
    offenders = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in ALLOWED:
                offenders += [f"{rel}:{hit}" for hit in direct_collectives(path.read_text())]
    assert not offenders, "call runtime.collectives instead of torch.distributed:\n" + "\n".join(offenders)


def test_backend_reduces_host_and_device_tensors():
    assert devices.backend_for("cpu") == "gloo"
    assert devices.backend_for("cuda") == "cpu:gloo,cuda:nccl"
    assert devices.backend_for("cuda", "nccl") == "cpu:gloo,cuda:nccl"
    assert devices.backend_for("xpu", "xccl") == "cpu:gloo,xpu:xccl"


class _FakeAccelerator:
    def device_name(self):
        return "cuda"

    def communication_backend_name(self):
        return "nccl"


def _launcher_env(monkeypatch, rank: int, local_rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")


def test_training_selects_local_rank_gpu_before_the_group(monkeypatch):
    """On CUDA: set_device(LOCAL_RANK) first, then DeepSpeed's group with cpu:gloo,cuda:nccl and --dist-timeout."""
    import deepspeed
    import deepspeed.accelerator

    calls = []
    _launcher_env(monkeypatch, rank=3, local_rank=1, world=4)
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: _FakeAccelerator())
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    monkeypatch.setattr(
        deepspeed, "init_distributed", lambda dist_backend, timeout: calls.append(("init", dist_backend, timeout))
    )
    assert collectives.init_training(timeout_minutes=7.5) == (3, 4)
    assert calls == [
        ("set_device", torch.device("cuda", 1)),
        ("init", "cpu:gloo,cuda:nccl", timedelta(minutes=7.5)),
    ]


def test_eval_selects_local_rank_gpu_before_the_group(monkeypatch):
    calls = []
    _launcher_env(monkeypatch, rank=1, local_rank=1, world=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda backend, timeout: calls.append(("init", backend, timeout))
    )
    collectives.init_eval(timeout_minutes=5)
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "cpu:gloo,cuda:nccl", timedelta(minutes=5))]


def test_dist_timeout_is_a_checked_flag(tmp_path):
    from pipeline.config import ConfigError, parse_args

    base = ["--data", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    assert parse_args([*base, "--dist-timeout", "5"]).run.dist_timeout == 5
    with pytest.raises(ConfigError, match="--dist-timeout"):
        parse_args([*base, "--dist-timeout", "0"])


def test_sync_counter_counts_cuda_sync_warnings(monkeypatch):
    """MEXMA_SYNC_DEBUG's counter: sync debug mode "warn" inside the block, its warnings counted, mode restored."""
    modes = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    with pytest.warns(UserWarning, match="something else"):  # other warnings are passed on
        with sync_debug.count_syncs(True) as syncs:
            for _ in range(2):  # the same line twice: counted twice, not deduplicated
                warnings.warn(f"{sync_debug.SYNC_WARNING} (item)", UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert syncs[0] == 2 and modes == ["warn", "default"]
    with sync_debug.count_syncs(False) as off:
        pass
    assert off[0] is None


# -- two CPU processes (gloo) ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes_main(rank: int, port: int, root: str) -> None:
    """Rank r plays node r (LOCAL_RANK 0 on each): node-local shard check and the shared output-dir check."""
    os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="1")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))
    out = {}
    node_dir = Path(root) / f"node{rank}"

    def check_shards():
        if not (node_dir / "shard.arrow").is_file():
            raise FileNotFoundError(f"{node_dir / 'shard.arrow'} missing")

    for name in ("shards", "shared"):
        try:
            if name == "shards":
                collectives.on_each_node(check_shards, (FileNotFoundError,))
            else:  # each "node" mounts its own directory at the same place: rank 0's probe is invisible to rank 1
                shared_dir.check_shared_dir(node_dir, wait_s=0.5)
            out[name] = "ok"
        except (FileNotFoundError, shared_dir.SharedDirError) as e:
            out[name] = f"{type(e).__name__}: {e}"
    out["probe_left"] = sorted(p.name for p in node_dir.iterdir() if p.name.startswith(".shared"))
    out["sums"] = collectives.all_reduce(torch.tensor([rank + 1.0]), "sum").tolist()
    out["flags"] = collectives.max_flags([rank, 1 - rank])
    out["ok"] = collectives.all_ok(rank == 0)
    (Path(root) / f"result{rank}.json").write_text(json.dumps(out))
    collectives.finish()


def test_once_jobs_per_node_and_shared_dir_check(tmp_path):
    """Node 1 lacks its shard copy: both ranks raise node 1's error. Node 1 cannot see rank 0's probe file: both
    raise SharedDirError naming the directory and rank 1; the probe is removed."""
    for r in (0, 1):
        (tmp_path / f"node{r}").mkdir()
    (tmp_path / "node0" / "shard.arrow").write_text("x")
    mp.spawn(_two_nodes_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"result{rank}.json").read_text())
        assert got["shards"].startswith("FileNotFoundError: ") and "node1/shard.arrow missing" in got["shards"]
        assert got["shared"].startswith("SharedDirError: ") and str(tmp_path / f"node{rank}") in got["shared"]
        assert "rank(s) 1 (" in got["shared"]
        assert got["probe_left"] == [] and got["sums"] == [3.0] and got["flags"] == [1, 1] and got["ok"] is False
