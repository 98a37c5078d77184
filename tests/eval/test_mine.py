"""``python -m eval.mine`` against a reference written from LASER's published mining algorithm (source/mine_bitexts.py):
faiss IndexFlatIP k-NN both ways, a per-pair Python loop for the margin, LASER's output per mode and retrieval."""

import json

import faiss
import numpy as np
import pytest

from eval.knn import knn_exact, merge_ranks
from eval.mine import main

# ---------------------------------------------------------------- the reference


def ref_load(path, unify):
    """Line -> row numbering and the rows' sentences (LASER's TextLoadUnify; line i is row i without unify)."""
    lines = open(path, encoding="utf-8").read().split("\n")[:-1]
    sent2ind, inds, sents = {}, [], []
    for line in lines:
        if unify:
            new = len(sent2ind)
            inds.append(sent2ind.setdefault(line, new))
            if inds[-1] == new:
                sents.append(line)
        else:
            inds.append(len(sents))
            sents.append(line)
    return inds, sents


def ref_unique(emb, inds):
    last = {row: line for line, row in enumerate(inds)}
    return emb[[last[r] for r in range(len(last))]]


def ref_knn(x, y, k):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(y)
    return index.search(x, k)


def ref_margin(a, b, margin):
    return a if margin == "absolute" else (a - b if margin == "distance" else a / b)


def ref_scores(x, y, cand, fwd_mean, bwd_mean, margin):
    scores = np.zeros(cand.shape)
    for i in range(cand.shape[0]):
        for j in range(cand.shape[1]):
            c = cand[i, j]
            scores[i, j] = ref_margin(x[i].dot(y[c]), (fwd_mean[i] + bwd_mean[c]) / 2, margin)
    return scores


def laser_reference(src, trg, xe, ye, mode, retrieval, margin, k, unify, threshold=0.0):
    """Output lines of LASER's mine_bitexts (both k-NN means always; the max retrieval's sort made stable)."""
    src_inds, src_sents = ref_load(src, unify)
    trg_inds, trg_sents = ref_load(trg, unify)
    x, y = xe.astype(np.float32), ye.astype(np.float32)
    if unify:
        x, y = ref_unique(x, src_inds), ref_unique(y, trg_inds)
    faiss.normalize_L2(x)
    faiss.normalize_L2(y)
    x2y_sim, x2y_ind = ref_knn(x, y, min(y.shape[0], k))
    y2x_sim, y2x_ind = ref_knn(y, x, min(x.shape[0], k))
    x2y_mean, y2x_mean = x2y_sim.mean(axis=1), y2x_sim.mean(axis=1)
    out = []
    if mode == "search":
        scores = ref_scores(x, y, x2y_ind, x2y_mean, y2x_mean, margin)
        best = x2y_ind[np.arange(x.shape[0]), scores.argmax(axis=1)]
        return [trg_sents[best[i]] for i in src_inds]
    if mode == "score":
        for i, j in zip(src_inds, trg_inds):
            s = ref_margin(x[i].dot(y[j]), (x2y_mean[i] + y2x_mean[j]) / 2, margin)
            out.append(f"{s}\t{src_sents[i]}\t{trg_sents[j]}")
        return out
    fwd_scores = ref_scores(x, y, x2y_ind, x2y_mean, y2x_mean, margin)
    bwd_scores = ref_scores(y, x, y2x_ind, y2x_mean, x2y_mean, margin)
    fwd_best = x2y_ind[np.arange(x.shape[0]), fwd_scores.argmax(axis=1)]
    bwd_best = y2x_ind[np.arange(y.shape[0]), bwd_scores.argmax(axis=1)]
    if retrieval == "fwd":
        out = [f"{fwd_scores[i].max()}\t{src_sents[i]}\t{trg_sents[j]}" for i, j in enumerate(fwd_best)]
    elif retrieval == "bwd":
        out = [f"{bwd_scores[j].max()}\t{src_sents[i]}\t{trg_sents[j]}" for j, i in enumerate(bwd_best)]
    elif retrieval == "intersect":
        out = [
            f"{fwd_scores[i].max()}\t{src_sents[i]}\t{trg_sents[j]}" for i, j in enumerate(fwd_best) if bwd_best[j] == i
        ]
    else:
        indices = np.stack(
            (np.concatenate((np.arange(x.shape[0]), bwd_best)), np.concatenate((fwd_best, np.arange(y.shape[0])))),
            axis=1,
        )
        scores = np.concatenate((fwd_scores.max(axis=1), bwd_scores.max(axis=1)))
        seen_src, seen_trg = set(), set()
        for i in np.argsort(-scores, kind="stable"):
            s, t = indices[i]
            if s not in seen_src and t not in seen_trg:
                seen_src.add(s)
                seen_trg.add(t)
                if scores[i] > threshold:
                    out.append(f"{scores[i]}\t{src_sents[s]}\t{trg_sents[t]}")
    return out


# ---------------------------------------------------------------- synthetic corpora


def corpus(tmp_path, n_x=23, n_y=29, d=16, seed=0, fp16=False):
    """Planted pairs (x row i ~ y row perm[i]) plus noise rows, repeated lines and tied target rows."""
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((n_y, d)).astype(np.float32)
    perm = rng.permutation(n_y)[:n_x]
    x = y[perm] + 0.6 * rng.standard_normal((n_x, d)).astype(np.float32)
    x[5:8] = rng.standard_normal((3, d))  # sources without a translation
    src = [f"src {i}" for i in range(n_x)]
    trg = [f"trg {j}" for j in range(n_y)]
    src[10], x[10] = src[3], x[3]  # a repeated line with its repeated embedding
    trg[7], y[7] = trg[2], y[2]
    y[12] = y[11]  # distinct sentences, equal embeddings: tied cosines
    x[14] = 2.0 * x[13]  # equal after normalisation
    dtype = np.float16 if fp16 else np.float32
    paths = {}
    for name, lines, emb in (("src", src, x), ("trg", trg, y)):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        emb.astype(dtype).tofile(tmp_path / f"{name}.emb")
        paths[name] = (str(tmp_path / f"{name}.txt"), str(tmp_path / f"{name}.emb"), emb.astype(dtype))
    return paths


def run_mine(paths, out, *extra, d=16):
    (src, src_emb, _), (trg, trg_emb, _) = paths["src"], paths["trg"]
    argv = [src, trg, "--src-lang", "de", "--trg-lang", "en", "--output", str(out), "--dim", str(d)]
    assert main([*argv, "--src-embeddings", src_emb, "--trg-embeddings", trg_emb, *extra]) == 0
    return out.read_text(encoding="utf-8").split("\n")[:-1]


def assert_same(got, want, mode, rel=2e-6):
    assert len(got) == len(want)
    if mode == "search":
        assert got == want
        return
    for g, w in zip(got, want):
        gs, gsrc, gtrg = g.split("\t")
        ws, wsrc, wtrg = w.split("\t")
        assert (gsrc, gtrg) == (wsrc, wtrg)
        assert np.float32(gs) == pytest.approx(np.float32(ws), rel=rel, abs=2e-7)


CASES = [("mine", r) for r in ("fwd", "bwd", "max", "intersect")] + [("score", "max"), ("search", "max")]


@pytest.mark.parametrize("margin", ["ratio", "distance", "absolute"])
@pytest.mark.parametrize(("mode", "retrieval"), CASES)
@pytest.mark.parametrize("unify", [False, True])
def test_identical_to_laser(tmp_path, margin, mode, retrieval, unify):
    paths = corpus(tmp_path, n_x=29 if mode == "score" else 23)
    flags = ["--mode", mode, "--retrieval", retrieval, "--margin", margin, "-k", "4", "--block", "8"]
    got = run_mine(paths, tmp_path / "out.tsv", *flags, *(["--unify"] if unify else []))
    want = laser_reference(paths["src"][0], paths["trg"][0], paths["src"][2], paths["trg"][2], mode, retrieval,
                           margin, 4, unify)  # fmt: skip
    assert_same(got, want, mode)
    summary = json.loads((tmp_path / "out.tsv.json").read_text())
    assert summary["mode"] == mode and summary["src"]["lines"] == len(paths["src"][2])


# k >= n: the k-NN means are means of all cosines, near 0, so the ratio amplifies a last-bit difference of the
# cosines ~1e3 times; the pairs must still be the same.
# k = 1 makes every mutual nearest pair score 1 under the ratio margin: their order in ``max`` then rests on the
# last bit of the cosine (LASER's per-pair dot vs the GEMM), so k = 1 is checked with ``fwd`` (source order).
# As in LASER, --threshold filters ``max`` only: ``fwd`` with a threshold above every score writes every pair.
@pytest.mark.parametrize(("k", "retrieval", "threshold"), [(1, "fwd", 5.0), (3, "max", 1.05), (40, "max", 1.5)])
def test_fp16_threshold_and_k(tmp_path, k, retrieval, threshold):
    paths = corpus(tmp_path, seed=3, fp16=True)
    flags = ["--mode", "mine", "--retrieval", retrieval, "--fp16", "-k", str(k), "--unify"]
    got = run_mine(paths, tmp_path / "o.tsv", *flags, *(["--threshold", str(threshold)] if threshold else []))
    want = laser_reference(paths["src"][0], paths["trg"][0], paths["src"][2], paths["trg"][2], "mine", retrieval,
                           "ratio", k, True, threshold=threshold or 0.0)  # fmt: skip
    assert want and (len(want) < 22) == (retrieval == "max")
    assert_same(got, want, "mine", rel=1e-4 if k >= 23 else 2e-6)


def test_blocks_and_ranks_do_not_change_neighbours():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((37, 8)).astype(np.float32), rng.standard_normal((41, 8)).astype(np.float32)
    y[20] = y[3]
    one = merge_ranks([knn_exact(x, y, 4, 4, block=5)], 37)
    merged = merge_ranks([knn_exact(x, y, 4, 4, block=5, rank=r, world=3) for r in range(3)], 37)
    for a, b in zip(vars(one).values(), vars(merged).values()):
        np.testing.assert_array_equal(a, b)  # the same blocks on any number of ranks: the same bits
    uncached = merge_ranks([knn_exact(x, y, 4, 4, block=5, cache_bytes=0)], 37)
    for a, b in zip(vars(one).values(), vars(uncached).values()):
        np.testing.assert_array_equal(a, b)
    whole = merge_ranks([knn_exact(x, y, 4, 4, block=64)], 37)  # other blocks: the GEMM's last bit may differ
    np.testing.assert_array_equal(whole.fwd_ind, one.fwd_ind)
    np.testing.assert_array_equal(whole.bwd_ind, one.bwd_ind)
    np.testing.assert_allclose(whole.bwd_sim, one.bwd_sim, rtol=1e-6)
    xn, yn = (np.ascontiguousarray(a / np.linalg.norm(a, axis=1, keepdims=True)) for a in (x, y))
    np.testing.assert_array_equal(whole.fwd_ind, ref_knn(xn, yn, 4)[1])
    np.testing.assert_array_equal(whole.bwd_ind, ref_knn(yn, xn, 4)[1])


def test_bad_input_exits_2(tmp_path, capsys):
    paths = corpus(tmp_path)
    (src, src_emb, _), (trg, _, _) = paths["src"], paths["trg"]
    argv = [src, trg, "--src-lang", "de", "--trg-lang", "en", "--output", str(tmp_path / "o"), "--mode", "mine"]
    assert main([*argv, "--src-embeddings", src_emb, "--trg-embeddings", src_emb, "--dim", "16"]) == 2
    assert "embeddings but" in capsys.readouterr().err
    assert main([*argv, "--src-embeddings", src_emb, "--trg-embeddings", src_emb, "--dim", "15"]) == 2
    assert "--dim" in capsys.readouterr().err
    score = [a if a != "mine" else "score" for a in argv]
    assert main([*score, "--src-embeddings", src_emb, "--trg-embeddings", src_emb, "--dim", "16"]) == 2
    assert "--mode score pairs line i of both files" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    bad = [str(tmp_path / "bad.txt"), *argv[1:]]
    assert main([*bad, "--src-embeddings", src_emb, "--trg-embeddings", src_emb, "--dim", "16"]) == 2
    assert "bad.txt:2: not valid UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
