"""Approximate k-NN (faiss index + exact rescoring), its cache in ``python -m eval.mine --index``, and the exact
fallback where faiss is missing."""

import json

import numpy as np
import pytest

import eval.knn as knn
import eval.mine as mine_cli
from eval.knn import build_index, knn_exact, knn_index, merge_ranks
from tests.eval.test_mine import corpus, run_mine


def _sides(n_x=300, n_y=260, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_x, d)).astype(np.float32), rng.standard_normal((n_y, d)).astype(np.float32)


def test_exhaustive_index_gives_the_exact_neighbours():
    x, y = _sides()
    exact = merge_ranks([knn_exact(x, y, 4, 4, block=64)], x.shape[0])
    index = build_index(y, "IVF4,Flat", nprobe=4, block=64)  # every list probed: nothing is missed
    sim, ind, fallback = knn_index(x, y, index, 4, [(0, 128), (128, 300)], rerank=2)
    assert fallback == 0
    np.testing.assert_array_equal(ind, exact.fwd_ind)
    np.testing.assert_allclose(sim, exact.fwd_sim, rtol=1e-6)


def test_short_candidate_lists_fall_back_to_exact_search():
    x, y = _sides(n_x=64, n_y=64)
    index = build_index(y, "IVF16,Flat", nprobe=1, block=64)  # ~4 vectors per list: fewer than k = 8
    sim, ind, fallback = knn_index(x, y, index, 8, [(0, 64)], rerank=1)
    exact = merge_ranks([knn_exact(x, y, 8, 8)], 64)
    assert fallback > 0
    short = [i for i in range(64) if np.array_equal(ind[i], exact.fwd_ind[i])]
    assert len(short) >= fallback  # every fallen-back row is exact (and some probed rows happen to be too)
    assert np.isfinite(sim).all() and (ind >= 0).all()


def test_approximate_recall_on_planted_pairs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    y = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    index = build_index(y, "IVF16,SQ8", nprobe=4, sample=2000, block=512)
    _, ind, _ = knn_index(x, y, index, 4, [(0, 2000)], rerank=4)
    assert (ind[:, 0] == np.arange(2000)).mean() > 0.95  # the planted translation is the nearest


def test_mine_index_matches_exact_and_is_reused(tmp_path):
    paths = corpus(tmp_path, n_x=40, n_y=44)
    flags = ["--mode", "mine", "--retrieval", "max", "--unify"]
    exact = run_mine(paths, tmp_path / "exact.tsv", *flags)
    approx = run_mine(paths, tmp_path / "ivf.tsv", *flags, "--index", "IVF2,Flat", "--nprobe", "2")
    assert [line.split("\t")[1:] for line in approx] == [line.split("\t")[1:] for line in exact]
    summary = json.loads((tmp_path / "ivf.tsv.json").read_text())
    assert summary["search"] == "faiss IVF2,Flat" and summary["exact_fallback_rows"] == 0
    files = sorted((tmp_path / "ivf.tsv.cache" / "index").iterdir())
    assert [f.name.split(".")[0] for f in files] == ["src", "trg"]
    stamps = [f.stat().st_mtime_ns for f in files]
    assert run_mine(paths, tmp_path / "ivf.tsv", *flags, "--index", "IVF2,Flat", "--nprobe", "2") == approx
    assert [f.stat().st_mtime_ns for f in files] == stamps


@pytest.mark.parametrize("index", [None, "IVF2,Flat"])
def test_without_faiss_the_search_is_exact(tmp_path, monkeypatch, capsys, index):
    paths = corpus(tmp_path)
    flags = ["--mode", "mine", "--retrieval", "intersect"]
    want = run_mine(paths, tmp_path / "with.tsv", *flags)
    monkeypatch.setattr(knn, "faiss_or_none", lambda: None)
    monkeypatch.setattr(mine_cli, "faiss_or_none", lambda: None)
    got = run_mine(paths, tmp_path / "without.tsv", *flags, *(["--index", index] if index else []))
    assert [line.split("\t")[1:] for line in got] == [line.split("\t")[1:] for line in want]
    np.testing.assert_allclose([float(g.split("\t")[0]) for g in got], [float(w.split("\t")[0]) for w in want], 1e-6)
    err = capsys.readouterr().err
    assert ("faiss is not installed on this node" in err) == (index is not None)
    search = json.loads((tmp_path / "without.tsv.json").read_text())["search"]
    assert search == ("exact" if index is None else "exact (faiss missing for --index)")
