"""The benchmark runs end to end on small shapes and checks fast == reference itself."""

import json

import numpy as np

from eval.bench import aligned_pairs, main


def test_bench_small(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--n", "300", "--d", "16", "--repeat", "1", "--margins", "ratio,absolute", "--peak-n", "2000",
                 "--peak-d", "16", "--encode-sentences", "0", "--out", str(out)]) == 0  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    scoring = [r for r in rows if r["bench"] == "xsim_scoring"]
    assert [r["margin"] for r in scoring] == ["ratio", "absolute"]
    assert all(r["errors"] == r["errors_ref"] and r["ms"] > 0 for r in scoring)
    peak = next(r for r in rows if r["bench"] == "xsim_peak_memory")
    assert peak["n"] == 2000 and peak["peak_mib"] >= peak["inputs_mib"] > 0
    assert {"device", "torch", "faiss", "git"} <= rows[0].keys()


def test_aligned_pairs_are_aligned():
    x, y = aligned_pairs(50, 8, noise=0.1)
    assert x.shape == y.shape == (50, 8)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    assert (cos > 0.9).all()  # 1 / sqrt(1 + 0.1^2) = 0.995 on average
