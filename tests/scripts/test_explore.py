"""scripts/explore.py: the learning-curve loop runs on a prepared dataset, embeds sentences independently of their
batch, and logs one record per run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scripts import explore

SMALL = [
    "num_layers=1",
    "hidden_size=32",
    "num_heads=2",
    "ffn_size=64",
    "head_layers=1",
    "head_heads=2",
    "head_ffn=64",
    "koleo_weight=1.0",
]


@pytest.fixture
def testset(tmp_path):
    """A FLORES-layout devtest of the prepared fixture's synthetic language: fra = s-words, eng = t-words."""
    rng = np.random.default_rng(0)
    words = [rng.integers(0, 40, size=int(rng.integers(2, 8))) for _ in range(24)]
    root = tmp_path / "testset" / "devtest"
    root.mkdir(parents=True)
    (root / "fra_Latn.devtest").write_text("".join(" ".join(f"s{w}" for w in ws) + "\n" for ws in words))
    (root / "eng_Latn.devtest").write_text("".join(" ".join(f"t{w}" for w in ws) + "\n" for ws in words))
    return root.parent


def test_curve_and_record(prepared, testset, tmp_path):
    log = tmp_path / "log.jsonl"
    argv = ["t", "--data", str(prepared), "--testset", str(testset), "--langs", "fra_Latn", "--log", str(log)]
    argv += ["--steps", "3", "--eval-every", "2", "--pairs", "100"]  # 300 pairs > 256: the order wraps
    rec = explore.main(argv + [x for s in SMALL for x in ("--set", s)])
    assert [step for step, _ in rec["curve"]] == [0, 2, 3]
    assert all(0.0 <= err <= 100.0 for _, err in rec["curve"])
    assert len(rec["final"]) == 3 and all(np.isfinite(rec["final"]))
    assert json.loads(log.read_text().splitlines()[-1]) == json.loads(json.dumps(rec))
    with pytest.raises(SystemExit, match="no such file .*deu_Latn.devtest"):
        explore.main(argv[:5] + ["--langs", "deu_Latn", "--log", str(log)])


def test_embeddings_do_not_depend_on_the_batch(prepared):
    from pipeline.model.mexma import ModelConfig, build_model

    over = {k: explore.parse_value(v) for k, v in (s.split("=", 1) for s in SMALL)}
    model = build_model(ModelConfig(hidden_dropout=0.0, **over), vocab_size=200)
    rng = np.random.default_rng(1)
    ids = [[0, *rng.integers(4, 199, size=int(rng.integers(1, 9))).tolist(), 2] for _ in range(7)]
    together = explore.embed(model, ids, chunk=4)  # chunks of 4 and 3 packed sequences
    alone = np.concatenate([explore.embed(model, [x]) for x in ids])
    torch.testing.assert_close(torch.from_numpy(together), torch.from_numpy(alone), atol=1e-5, rtol=1e-4)
