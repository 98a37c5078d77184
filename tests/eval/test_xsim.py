"""xsim against hand-computed margins, LASER's tie rules and the two-search reference."""

import sys

import numpy as np
import pytest

from eval.xsim import _normalized, count_errors, errtype_breakdown, nearest, nearest_ref, xsim, xsim_ref

# Unit vectors with exact decimal cosines. S = X Y^T (rows x_i, columns y_j); y_1 is a hub:
#        y0     y1     y2
# x0  .768  .9728   .48
# x1  .64   .744    .6
# x2  .36   .864    .8
# k = 2: forward mean of the two best per row  avg_x = (.8704, .692, .832)
#        backward mean of the two best per column avg_y = (.704, .9184, .7)
HUB_X = np.array([[0.48, 0.8, 0.36], [0.6, 0.0, 0.8], [0.8, 0.6, 0.0]], dtype=np.float32)
HUB_Y = np.array([[0.0, 0.6, 0.8], [0.6, 0.64, 0.48], [1.0, 0.0, 0.0]], dtype=np.float32)


def test_absolute_margin_is_the_nearest_neighbour():
    # Row maxima: y1 (.9728), y1 (.744), y1 (.864): x0 and x2 are wrong.
    assert nearest(HUB_X, HUB_Y, "absolute", k=2).tolist() == [1, 1, 1]
    assert xsim(HUB_X, HUB_Y, "absolute", k=2) == (2, 3)


def test_ratio_margin_by_hand():
    # x0: y1 .9728/((.8704+.9184)/2) = 1.0877 > y0 .768/((.8704+.704)/2) = 0.9756  -> y1 (error)
    # x1: y1 .744/((.692+.9184)/2)   = 0.9240 > y0 .64/((.692+.704)/2)    = 0.9169  -> y1
    # x2: y1 .864/((.832+.9184)/2)   = 0.9872 < y2 .8/((.832+.7)/2)       = 1.0444  -> y2
    assert nearest(HUB_X, HUB_Y, "ratio", k=2).tolist() == [1, 1, 2]
    assert xsim(HUB_X, HUB_Y, "ratio", k=2) == (1, 3)


def test_distance_margin_by_hand():
    # x0: y1 .9728 - .8944 = .0784  > y0 .768 - .7872 = -.0192  -> y1 (error)
    # x1: y1 .744 - .8052 = -.0612  < y0 .64 - .698 = -.0580    -> y0 (error)
    # x2: y1 .864 - .8752 = -.0112  < y2 .8 - .766 = .0340      -> y2
    assert nearest(HUB_X, HUB_Y, "distance", k=2).tolist() == [1, 0, 2]
    assert xsim(HUB_X, HUB_Y, "distance", k=2) == (2, 3)


def test_ties_follow_faiss():
    # x0 = e0 has cosine 1 with the three copies y1 = y2 = y3 = e0. faiss keeps the lowest ids at the k-th
    # place ({1, 2} for k = 2) and lists equal values by descending id ([2, 1]); every copy has the same
    # backward mean (1 + 0) / 2, so the scores tie and argmax takes the first listed: y2. The 1-NN keeps y1.
    x = np.eye(4, dtype=np.float32)
    y = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
    for margin, want in (("ratio", 2), ("distance", 2), ("absolute", 1)):
        got = nearest(x, y, margin, k=2)
        assert got[0] == want
        assert got.tolist() == nearest_ref(x, y, margin, k=2).tolist()


@pytest.mark.parametrize("margin", ["ratio", "distance", "absolute"])
def test_many_ties_match_reference(margin):
    # Binary vectors: cosines take few values, so ties at the k-th place and in the argmax are everywhere.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (120, 6)).astype(np.float32)
    y = rng.integers(0, 2, (150, 6)).astype(np.float32)
    x[x.sum(1) == 0, 0] = 1
    y[y.sum(1) == 0, 0] = 1
    for block_bytes in (4 * 150, 4 * 150 * 7, 2**30):  # 1-row blocks (fewer than k), 7-row blocks, one block
        assert nearest(x, y, margin, 4, block_bytes=block_bytes).tolist() == nearest_ref(x, y, margin, 4).tolist()


@pytest.mark.parametrize("margin", ["ratio", "distance", "absolute"])
@pytest.mark.parametrize("extra", [0, 37])
def test_matches_reference_with_hard_negatives(margin, extra):
    n, d = 257, 24
    x = np.random.randn(n, d).astype(np.float32)
    y = np.concatenate([x + 2.5 * np.random.randn(n, d), np.random.randn(extra, d)]).astype(np.float32)
    x_before, y_before = x.copy(), y.copy()
    fast = nearest(x, y, margin, 4, block_bytes=4 * (n + extra) * 13)
    assert fast.tolist() == nearest_ref(x, y, margin, 4).tolist()
    errors, count = xsim(x, y, margin)
    assert count == n and 0 < errors < n
    assert (errors, count) == xsim_ref(x, y, margin)
    np.testing.assert_array_equal(x, x_before)  # inputs are not normalised in place
    np.testing.assert_array_equal(y, y_before)


def test_torch_gemm_path():
    # The CUDA code path (torch.mm, TF32 off) run on the CPU: its cosines may differ from faiss's in the last bit,
    # so the data keeps the best two margin scores of every row far apart.
    n, d = 200, 16
    x = np.random.randn(n, d).astype(np.float32)
    y = np.concatenate([x + 0.3 * np.random.randn(n, d), np.random.randn(20, d)]).astype(np.float32)
    for margin in ("ratio", "distance", "absolute"):
        got = nearest(x, y, margin, 4, device="cpu", gemm="torch", block_bytes=4 * 220 * 33)
        assert got.tolist() == nearest_ref(x, y, margin, 4).tolist()
    with pytest.raises(ValueError, match="gemm must be"):
        nearest(x, y, gemm="cublas")


def test_hard_negatives_add_errors():
    # xsim++: an extra row of y identical to x0 beats the aligned row y0.
    x = np.array([[1, 0], [0, 1]], dtype=np.float32)
    y = np.array([[0.8, 0.6], [0, 1], [1, 0]], dtype=np.float32)
    assert xsim(x, y[:2], "absolute", k=1) == (0, 2)
    assert xsim(x, y, "absolute", k=1) == (1, 2)


def test_text_comparison_forgives_duplicates():
    best = np.array([1, 0, 2])
    assert count_errors(best) == 2
    assert count_errors(best, ["same", "same", "other"]) == 0
    with pytest.raises(ValueError, match="target_texts has 2 lines"):
        count_errors(best, ["same", "same"])


def test_errtype_breakdown():
    texts = ["A cat.", "A dog.", "A cat!", "One cat."]  # rows 2 and 3 are augmented versions of row 0
    augmented = {"A cat!": {"src": "A cat.", "errtype": "punct"}, "One cat.": {"src": "A cat.", "errtype": "num"}}
    best = np.array([2, 3])  # row 0 retrieves its own punctuation variant, row 1 an unrelated variant
    assert errtype_breakdown(best, texts, augmented) == {"Misaligned": 1, "punct": 1}


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (np.ones((3, 2)), np.ones((3, 3)), {}, "differ in dimension"),
        (np.ones((4, 2)), np.ones((3, 2)), {}, "at least as many rows"),
        (np.ones((3, 2)), np.ones((3, 2)), {"k": 4}, r"k must be in \[1, 3\]"),
        (np.ones((3, 2)), np.ones((3, 2)), {"margin": "cosine"}, "margin must be one of"),
        (np.full((3, 2), np.nan), np.ones((3, 2)), {"k": 1}, "x contains NaN"),
        (np.ones(3), np.ones((3, 2)), {}, "2-D numpy array"),
    ],
)
def test_bad_arguments(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        xsim(x.astype(np.float32), y.astype(np.float32), **kwargs)


@pytest.mark.parametrize("margin", ["ratio", "distance", "absolute"])
def test_without_faiss_the_exact_scan_gives_the_same_answers(margin, monkeypatch):
    # An offline node's wheelhouse carries no faiss: numpy normalisation + the blocked scan must agree with faiss.
    n, d = 150, 16
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = np.concatenate([x + 0.3 * rng.standard_normal((n, d)), rng.standard_normal((20, d))]).astype(np.float32)
    x[3] = 0  # a zero row stays zero, as with faiss.normalize_L2
    want = nearest_ref(x, y, margin, 4)
    normalised = _normalized(y)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    np.testing.assert_allclose(_normalized(y), normalised, rtol=0, atol=1e-6)
    assert not _normalized(x)[3].any()
    assert nearest(x, y, margin, 4).tolist() == want.tolist()
    with pytest.raises(ImportError):
        nearest_ref(x, y, margin, 4)  # the reference is LASER's two faiss searches: it needs faiss
