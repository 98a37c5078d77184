"""``python -m eval.mine --model``: sharded embedding into the memory-mapped cache and sharded k-NN over 2 processes
(gloo on CPU) give the one-process output; a rerun reuses the cache."""

import json
import os
import random

import torch.multiprocessing as mp

from eval.mine import main
from tests.eval.conftest import WORDS, _translate
from tests.eval.test_distributed import _free_port


def _rank_main(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    if main(argv) != 0:
        raise SystemExit(f"rank {rank} failed")


def write_sides(root, n=30, seed=0):
    rng = random.Random(seed)
    english = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) for _ in range(n)]
    french = [_translate(s, "fra_Latn") for s in english]
    rng.shuffle(french)
    (root / "src.fr").write_text("\n".join(french + french[:3]) + "\n", encoding="utf-8")  # 3 repeated lines
    (root / "trg.en").write_text("\n".join(english) + "\n", encoding="utf-8")
    return str(root / "src.fr"), str(root / "trg.en")


def test_two_ranks_equal_one_and_rerun_reuses_cache(tiny_model, tmp_path):
    src, trg = write_sides(tmp_path)
    common = [src, trg, "--src-lang", "fr", "--trg-lang", "en", "--model", str(tiny_model), "--unify", "--fp16"]
    common += ["--mode", "mine", "--retrieval", "max", "--chunk", "7", "--block", "8", "--threshold", "-1"]
    one, two = tmp_path / "one.tsv", tmp_path / "two.tsv"
    assert main([*common, "--output", str(one)]) == 0
    mp.spawn(_rank_main, args=(2, _free_port(), [*common, "--output", str(two)]), nprocs=2, join=True)
    summary = json.loads((tmp_path / "two.tsv.json").read_text())
    assert one.read_text() == two.read_text() and len(one.read_text().splitlines()) == summary["pairs"] > 0
    assert summary["world_size"] == 2 and summary["src"] == {"file": src, "lang": "fr", "lines": 33, "rows": 30}
    emb = tmp_path / "one.tsv.cache" / "src.fr" / "emb.f16"
    assert emb.stat().st_size == 30 * 32 * 2 and len(list((emb.parent / "done").iterdir())) == 5
    stamp = emb.stat().st_mtime_ns
    assert main([*common, "--output", str(one), "--model", "no/such/model"]) != 0  # a new fingerprint: re-embeds
    assert main([*common, "--output", str(one)]) == 0
    assert emb.stat().st_mtime_ns == stamp and one.read_text() == two.read_text()
    assert main([*common, "--output", str(one), "--chunk", "11"]) == 0  # other chunks: embedded again, same pairs
    assert emb.stat().st_mtime_ns != stamp and len(list((emb.parent / "done").iterdir())) == 3
