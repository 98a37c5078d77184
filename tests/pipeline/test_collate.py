"""MexmaCollator: packed layout, masking rules, determinism and resume of the generator."""

import pytest
import torch

from pipeline.data.collate import IGNORE_INDEX, MexmaCollator

V = 120
SPECIAL = {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": V - 1}
SPECIAL_SET = set(SPECIAL.values())


def make_rows(n, lo=1, hi=30, vocab=V):
    """n pairs of `<s> x </s>` with 1..hi-1 normal tokens per side."""
    lens = torch.randint(lo, hi, (n, 2)).tolist()
    return [
        {
            "src_ids": [0, *torch.randint(4, vocab - 1, (a,)).tolist(), 2],
            "trg_ids": [0, *torch.randint(4, vocab - 1, (b,)).tolist(), 2],
        }
        for a, b in lens
    ]


def views(batch):
    cu = batch["cu_seqlens"].tolist()
    return [(batch["input_ids"][s:e], batch["labels"][s:e], batch["position_ids"][s:e]) for s, e in zip(cu, cu[1:])]


def test_layout_order_positions_and_labels():
    rows = make_rows(5)
    batch = MexmaCollator(SPECIAL, V, seed=1)(rows)
    b = batch["n_pairs"]
    assert b == 5 and batch["cu_seqlens"].dtype == torch.int32 and batch["input_ids"].dtype == torch.int64
    assert batch["cu_seqlens"][0] == 0 and batch["cu_seqlens"][-1] == batch["input_ids"].numel()
    v = views(batch)
    assert len(v) == 4 * b
    lens = [len(ids) for ids, _, _ in v]
    assert batch["max_seqlen"] == max(lens)
    for i, row in enumerate(rows):
        assert v[2 * b + i][0].tolist() == row["src_ids"]  # clean src
        assert v[3 * b + i][0].tolist() == row["trg_ids"]  # clean trg
        for masked, clean in ((v[i], v[2 * b + i]), (v[b + i], v[3 * b + i])):
            ids, labels, pos = masked
            assert pos.tolist() == list(range(2, 2 + len(ids)))  # XLM-R: padding_idx + 1
            restored = torch.where(labels != IGNORE_INDEX, labels, ids)
            assert restored.tolist() == clean[0].tolist()
            assert (clean[1] == IGNORE_INDEX).all()


def test_specials_never_masked_and_one_per_sentence():
    rows = make_rows(40, lo=1, hi=4)  # short sentences: forced selection matters
    rows.append({"src_ids": [0, 2], "trg_ids": [0, 3, 2]})  # nothing maskable on src, only <unk> on trg
    batch = MexmaCollator(SPECIAL, V, src_mask_prob=0.05, trg_mask_prob=0.05, seed=3)(rows)
    b = batch["n_pairs"]
    for i, (ids, labels, _) in enumerate(views(batch)[: 2 * b]):
        if i in (b - 1, 2 * b - 1):
            continue
        hit = labels != IGNORE_INDEX
        assert hit.sum() >= 1
        assert not any(int(t) in SPECIAL_SET for t in labels[hit])
        assert ids[0] == 0 and ids[-1] == 2  # <s> and </s> stay in place
    for i in (b - 1, 2 * b - 1):  # the all-special sentences keep no label
        assert (views(batch)[i][1] == IGNORE_INDEX).all()


def test_ratio_and_80_10_10():
    rows = make_rows(400, lo=20, hi=40, vocab=5000)
    special = {**SPECIAL, "mask": 4999}
    batch = MexmaCollator(special, 5000, src_mask_prob=0.4, trg_mask_prob=0.2, seed=5)(rows)
    b = batch["n_pairs"]
    cu = batch["cu_seqlens"].tolist()
    for side, prob in ((slice(cu[0], cu[b]), 0.4), (slice(cu[b], cu[2 * b]), 0.2)):
        ids, labels = batch["input_ids"][side], batch["labels"][side]
        hit = labels != IGNORE_INDEX
        ratio = hit.sum().item() / (ids.numel() - 2 * b)  # exclude <s>, </s>
        assert abs(ratio - prob) < 0.02
        as_mask = (ids[hit] == 4999).float().mean().item()
        unchanged = (ids[hit] == labels[hit]).float().mean().item()
        assert abs(as_mask - 0.8) < 0.03 and abs(unchanged - 0.1) < 0.02  # random ids rarely equal the label
        assert not torch.isin(ids[hit], torch.tensor([0, 1, 2, 3])).any()  # random ids are never special


def test_zero_prob_masks_nothing_on_that_side():
    batch = MexmaCollator(SPECIAL, V, src_mask_prob=0.0, trg_mask_prob=0.4)(make_rows(6))
    cu = batch["cu_seqlens"].tolist()
    assert (batch["labels"][: cu[6]] == IGNORE_INDEX).all()
    assert (batch["labels"][cu[6] : cu[12]] != IGNORE_INDEX).any()


def test_seeded_and_resumable():
    rows = [make_rows(4) for _ in range(3)]
    a, b = MexmaCollator(SPECIAL, V, seed=7), MexmaCollator(SPECIAL, V, seed=7)
    first = [a(r) for r in rows]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(first, [b(r) for r in rows]))
    c = MexmaCollator(SPECIAL, V, seed=7)
    c(rows[0])
    state = c.state_dict()
    d = MexmaCollator(SPECIAL, V, seed=99)
    d.load_state_dict(state)
    assert torch.equal(d(rows[1])["input_ids"], first[1]["input_ids"])
    assert torch.equal(d(rows[2])["labels"], first[2]["labels"])
    other = MexmaCollator(SPECIAL, V, seed=8)(rows[0])
    assert not torch.equal(other["labels"], first[0]["labels"])


@pytest.mark.parametrize(
    ("kwargs", "rows", "match"),
    [
        ({"special_ids": {"bos": 0, "pad": 1}}, None, "lacks"),
        ({"src_mask_prob": 1.0}, None, "src_mask_prob"),
        ({}, [], "empty"),
        ({}, [{"src_ids": [0, 5, 2]}], "trg_ids"),
        ({}, [{"src_ids": [0, 5, 2], "trg_ids": []}], "row 0 'trg_ids'"),
        ({}, [{"src_ids": [0, V + 5, 2], "trg_ids": [0, 5, 2]}], "outside"),
    ],
)
def test_bad_input_is_named(kwargs, rows, match):
    args = {"special_ids": SPECIAL, "vocab_size": V, **kwargs}
    with pytest.raises(ValueError, match=match):
        MexmaCollator(**args)(rows if rows is not None else make_rows(2))


def test_one_sides_ratio_leaves_the_other_sides_masks_alone():
    rows = make_rows(8)
    a = MexmaCollator(SPECIAL, V, src_mask_prob=0.4, trg_mask_prob=0.0, seed=9)(rows)
    b = MexmaCollator(SPECIAL, V, src_mask_prob=0.4, trg_mask_prob=0.3, seed=9)(rows)
    src_end = int(a["cu_seqlens"][8])
    assert torch.equal(a["labels"][:src_end], b["labels"][:src_end])
    assert torch.equal(a["input_ids"][:src_end], b["input_ids"][:src_end])
    c = MexmaCollator(SPECIAL, V, src_mask_prob=0.1, trg_mask_prob=0.3, seed=9)(rows)
    trg = slice(int(b["cu_seqlens"][8]), int(b["cu_seqlens"][16]))
    assert torch.equal(b["labels"][trg], c["labels"][trg])
