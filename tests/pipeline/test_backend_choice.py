"""Start-up backend choice: rank 0 decides and every rank adopts it (two gloo processes whose own measurements would
disagree), on a timing batch drawn over the whole split rather than its first rows."""

import multiprocessing as mp
from types import SimpleNamespace

import numpy as np

from pipeline.training.backend_choice import choose_backends, timing_lengths


def test_timing_batch_has_the_data_mean_length_not_the_first_rows():
    lengths = np.full((20_000, 2), 60, dtype=np.uint16)
    lengths[:2_000] = 4  # the split's first rows: one corpus of very short pairs
    views = timing_lengths(lengths, max_length=50, batch_pairs=150, batch_tokens=0)
    assert len(views) == 4 * 150  # masked src, trg per pair, then the clean views again
    assert views[: 2 * 150] == views[2 * 150 :]
    data_mean = np.minimum(lengths, 50).mean()  # 45.4
    assert abs(np.mean(views) - data_mean) < 3 and max(views) == 50
    budget = timing_lengths(lengths, max_length=50, batch_pairs=0, batch_tokens=18_000)
    assert abs(len(budget) // 4 - 18_000 / (4 * data_mean)) < 10  # pairs of the mean cost that fill the budget


class FakeModel:
    def __init__(self, rank):
        self.rank, self.backends, self.measured = rank, "unresolved", False

    def select_backends(self, device, dtype, lengths):
        self.measured = True
        self.backends = "kernel" if self.rank == 0 else "varlen"  # noisy timings: each rank would pick its own
        return {"encoder": {"backend": self.backends, "reason": f"timed on rank {self.rank}"}}


def _rank(rank, store, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = FakeModel(rank)
    report = choose_backends(model, "cpu", None, [5, 7, 5, 7], rank)
    queue.put((rank, model.backends, model.measured, report))
    dist.destroy_process_group()


def test_rank_0_decides_and_every_rank_adopts_it(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, tmp_path / "store", queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, rest) for r, *rest in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    assert results[0][:2] == ["kernel", True] and results[1][:2] == ["kernel", False]  # rank 1 never measured
    assert results[1][2]["encoder"]["reason"] == "timed on rank 0"
    assert results[1][2]["timing_batch"] == {"sequences": 4, "tokens": 24, "mean_length": 6.0}


def test_one_process_measures_and_keeps_its_choice():
    model = FakeModel(0)
    report = choose_backends(model, "cpu", None, [3, 3], rank=0, select=model.select_backends)
    assert model.backends == "kernel" and report["encoder"]["backend"] == "kernel"
    assert SimpleNamespace(**report["timing_batch"]).tokens == 6
