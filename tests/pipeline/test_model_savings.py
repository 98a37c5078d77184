"""the encoder's last layer at the masked views' rows + the clean views' CLS rows only, the head's
last layer at the masked positions only. Same losses, metrics and gradients as every layer over every row
(`MexmaModel.skip_unread_rows = False`, the computation before): to 1e-9 in float64, to rounding in float32."""

import copy
import dataclasses
import os

import pytest
import torch

from pipeline.data.collate import MexmaCollator, pack
from pipeline.model import attention
from pipeline.model.backends import Backends
from pipeline.model.mexma import build_model
from tests.pipeline.test_collate import make_rows
from tests.pipeline.test_equivalence import SPECIAL, V, small_config

OUT_KEYS = ("loss", "mlm_loss", "cls_loss", "koleo_loss", "src_mlm_loss", "trg_mlm_loss", "src_cls", "trg_cls")


def _step(model, batch, skip):
    """Forward + backward -> (outputs, {name: grad})."""
    model.zero_grad(set_to_none=True)
    model.skip_unread_rows = skip
    out = model(**batch)
    out["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def _double(model, batch, backend=None):
    model = copy.deepcopy(model).double()
    if backend:
        model.cfg = dataclasses.replace(model.cfg, attention=backend)
        model.backends = Backends.from_config(model.cfg)
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    return model, batch


def _err(a, b):
    return float((a.double() - b.double()).abs().max())


def assert_savings_exact(model, batch, fp64=True, ref64_backend=None):
    """The saving forward's outputs and every gradient against the full forward's.

    float64 (`fp64`): equal to 1e-9 of each tensor's largest entry: the same math, no approximation. float32:
    outputs within 2e-6 relative; each gradient no further from the full fp32 one than 4x that one's own
    distance from float64 (the rounding fp32 already has: up to ~1e-4 relative on the embedding gradients,
    through KoLeo's nearest-neighbour terms), or 2e-6 relative where that is larger.
    """
    out, grads = _step(model, batch, skip=True)
    ref, ref_grads = _step(model, batch, skip=False)
    m64, b64 = _double(model, batch, ref64_backend)
    exact, exact_grads = _step(m64, b64, skip=False)
    assert set(grads) == set(ref_grads) == {n for n, _ in model.named_parameters()}
    for key in OUT_KEYS:
        assert _err(out[key], ref[key]) <= 2e-6 * float(ref[key].abs().max()) + 1e-7, key
    assert torch.equal(out["n_masked"], ref["n_masked"])
    for name, g in ref_grads.items():
        bound = max(4 * _err(g, exact_grads[name]), 2e-6 * float(g.abs().max())) + 1e-7
        assert _err(grads[name], g) <= bound, f"{name}: {_err(grads[name], g):.3g} > {bound:.3g}"
    if not fp64:
        return
    out64, grads64 = _step(m64, b64, skip=True)
    for key in OUT_KEYS:
        assert _err(out64[key], exact[key]) <= 1e-9 * float(exact[key].abs().max()) + 1e-12, key
    for name, g in exact_grads.items():
        err, bound = _err(grads64[name], g), 1e-9 * float(g.abs().max()) + 1e-12
        assert err <= bound, f"float64 {name}: {err:.3g} > {bound:.3g}"


def _batch(n_pairs, hi=30, lo=1, **collator):
    return MexmaCollator(SPECIAL, V, seed=n_pairs, **collator)(make_rows(n_pairs, lo=lo, hi=hi, vocab=V))


@pytest.mark.parametrize("backend", ["sdpa", "ref"])
@pytest.mark.parametrize("n_pairs", [1, 5])
def test_savings_match_the_full_forward(backend, n_pairs):
    torch.manual_seed(n_pairs)
    model = build_model(small_config(attention=backend), V)
    assert_savings_exact(model, _batch(n_pairs))


def test_savings_deeper_stacks():
    """Three encoder and three head layers: the stock layers before the hand-written last one."""
    torch.manual_seed(3)
    model = build_model(small_config(attention="sdpa", num_layers=3, head_layers=3), V)
    assert_savings_exact(model, _batch(4))


def test_savings_single_layer_stacks_and_gradient_checkpointing():
    """One layer per stack (the last is the first), and activation checkpointing (the last layer recomputed)."""
    torch.manual_seed(1)
    model = build_model(small_config(num_layers=1, head_layers=1), V)
    assert_savings_exact(model, _batch(3))
    torch.manual_seed(2)
    model = build_model(small_config(gradient_checkpointing=True), V)
    calls = []
    for layer in (model.encoder.encoder.layer[-1], model.head.layer[-1]):
        layer.intermediate.register_forward_hook(lambda *_, c=calls: c.append(1))
    batch = _batch(4)
    _step(model, batch, skip=True)
    assert len(calls) == 4  # each hand-written last layer ran again in backward
    assert_savings_exact(model, batch)


def test_savings_shortest_sequences():
    """Every sentence is `<s> </s>` (length 2, nothing to mask) plus pairs with one token."""
    rows = [{"src_ids": [0, 2], "trg_ids": [0, 2]} for _ in range(3)]
    rows += [{"src_ids": [0, 7, 2], "trg_ids": [0, 2]}, {"src_ids": [0, 2], "trg_ids": [0, 9, 2]}]
    batch = MexmaCollator(SPECIAL, V, seed=0)(rows)
    assert batch["max_seqlen"] == 3 and batch["n_masked_src"] == batch["n_masked_trg"] == 1
    torch.manual_seed(0)
    for backend in ("sdpa", "ref"):
        assert_savings_exact(build_model(small_config(attention=backend), V), batch)
    only_short = MexmaCollator(SPECIAL, V, seed=0)(rows[:1])  # B = 1, length 2, no masked token at all
    assert only_short["n_masked"] == 0 and only_short["max_masked"] == 0
    assert_savings_exact(build_model(small_config(), V), only_short)


@pytest.mark.parametrize("backend", ["sdpa", "ref"])
def test_savings_with_one_side_unmasked(backend):
    """trg_mask_prob=0: the trg views have no masked position (zero query rows in the head's last layer)."""
    batch = _batch(4, trg_mask_prob=0.0)
    assert batch["n_masked_trg"] == 0 and batch["n_masked_src"] > 0
    torch.manual_seed(4)
    assert_savings_exact(build_model(small_config(attention=backend), V), batch)
    batch = _batch(3, src_mask_prob=0.0)
    assert batch["n_masked_src"] == 0 and batch["n_masked_trg"] > 0
    assert_savings_exact(build_model(small_config(attention=backend), V), batch)


def test_savings_with_kernel_backend_interpreted(monkeypatch):
    """attention="kernel" (Triton under TRITON_INTERPRET=1, fp32): the full-row parts through the kernel, the
    query-subset calls through padded SDPA (the kernel is self-attention only)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel runs on CPU only under TRITON_INTERPRET=1")
    torch.manual_seed(5)
    model = build_model(small_config(attention="kernel"), V)
    assert_savings_exact(model, _batch(2, hi=12), fp64=False, ref64_backend="sdpa")


def test_old_batches_without_max_masked_still_work():
    batch = _batch(3)
    old = {k: v for k, v in batch.items() if k != "max_masked"}
    torch.manual_seed(6)
    model = build_model(small_config(), V)
    out, grads = _step(model, old, skip=True)
    ref, ref_grads = _step(model, batch, skip=True)
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=1e-6, atol=1e-7)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7)


def test_collator_max_masked_is_the_largest_count_per_view():
    batch = _batch(6)
    cu = batch["cu_seqlens"].tolist()
    pos = batch["mlm_positions"].tolist()
    counts = [sum(a <= p < b for p in pos) for a, b in zip(cu[:12], cu[1:13])]
    assert batch["max_masked"] == max(counts) > 0


@pytest.mark.parametrize("backend", ["sdpa", "ref"])
def test_encode_packed_cls_only_equals_the_full_encode(backend):
    torch.manual_seed(7)
    model = build_model(small_config(attention=backend, num_layers=3), V).eval()
    lens = [2, 9, 31, 5, 2, 17]
    seqs = [torch.tensor([0, *torch.randint(4, V - 1, (n - 2,)).tolist(), 2]) for n in lens]
    b = pack(seqs, [torch.full_like(s, -100) for s in seqs], n_pairs=0)
    args = (b["input_ids"], b["position_ids"], b["cu_seqlens"], b["max_seqlen"])
    with torch.no_grad():
        full = model.encode_packed(*args)[b["cu_seqlens"][:-1].long()]
        cls = model.encode_packed(*args, cls_only=True)
    assert cls.shape == (len(lens), 64)
    torch.testing.assert_close(cls, full, rtol=1e-5, atol=1e-6)
    one = pack(seqs[:1], [torch.full_like(seqs[0], -100)], n_pairs=0)  # one sequence of length 2
    with torch.no_grad():
        got = model.encode_packed(one["input_ids"], one["position_ids"], one["cu_seqlens"], 2, cls_only=True)
        want = model.encode_packed(one["input_ids"], one["position_ids"], one["cu_seqlens"], 2)[:1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_eval_mode_with_dropout_configured_is_exact_and_train_mode_honours_attention_dropout():
    """Dropout settings only matter in training: eval is exact; in training with attention dropout the saving
    forward still runs (SDPA's dropout on the query rows it computes) and differs from the eval loss."""
    torch.manual_seed(8)
    cfg = small_config(attention="sdpa", attention_dropout=0.3, hidden_dropout=0.1, head_dropout=0.1)
    model = build_model(cfg, V)
    batch = _batch(4)
    model.eval()
    with torch.no_grad():
        model.skip_unread_rows = True
        a = model(**batch)["loss"]
        model.skip_unread_rows = False
        b = model(**batch)["loss"]
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    model.train()
    model.skip_unread_rows = True
    out = model(**batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and not torch.allclose(out["loss"], a)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_subset_attention_backends_agree():
    """packed_attention with a query subset: sdpa and ref (and kernel, which Backends.subset routes to sdpa off CUDA)
    against a dense per-sequence softmax, values and gradients (float64)."""
    lens_k, lens_q = [2, 9, 30, 1, 5], [1, 0, 7, 1, 5]
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(lens_q), 3, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(sum(lens_k), 3, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    g = torch.randn_like(q)
    expected = []
    for i in range(len(lens_k)):
        qs = q[cu_q[i] : cu_q[i + 1]].transpose(0, 1)
        ks, vs = (t[cu_k[i] : cu_k[i + 1]].transpose(0, 1) for t in (k, v))
        expected.append((torch.softmax(qs @ ks.transpose(-1, -2) * 0.3, -1) @ vs).transpose(0, 1))
    expected = torch.cat(expected)
    want = torch.autograd.grad(expected, (q, k, v), g)
    for requested in ("sdpa", "ref", "kernel"):
        backend = Backends.subset(requested, q.device, q.dtype, q.shape[-1])
        out = attention.packed_attention(q, k, v, cu_q, max(lens_q), 0.3, backend, cu_seqlens_k=cu_k,
                                         max_seqlen_k=max(lens_k))  # fmt: skip
        torch.testing.assert_close(out, expected)
        for a, b in zip(torch.autograd.grad(out, (q, k, v), g), want):
            torch.testing.assert_close(a, b)


def test_varlen_subset_calls_map_arguments(monkeypatch):
    """attention="varlen" (faked on CPU): the subset calls pass their own cu_seq_q / cu_seq_k and max_q / max_k."""
    calls = []

    def fake(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None):
        calls.append((query.shape[0], key.shape[0], cu_seq_q is cu_seq_k, max_q, max_k))
        assert cu_seq_q.dtype == cu_seq_k.dtype == torch.int32 and isinstance(max_q, int) and isinstance(max_k, int)
        assert key.shape == value.shape and query.shape[1:] == key.shape[1:]
        assert len(cu_seq_q) == len(cu_seq_k)
        assert int(cu_seq_q[-1]) == query.shape[0] and int(cu_seq_k[-1]) == key.shape[0]
        assert int((cu_seq_q.diff()).max()) <= max_q and int((cu_seq_k.diff()).max()) <= max_k
        return attention.subset_attention_ref(query, key, value, cu_seq_q, cu_seq_k, scale)

    monkeypatch.setattr(attention, "_varlen_attn", fake)
    batch = _batch(3)
    outs = {}
    for backend in ("varlen", "sdpa"):
        torch.manual_seed(9)
        model = build_model(small_config(attention=backend), V).eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[backend] = model(**batch)["loss"]
    t, ht, b = batch["input_ids"].numel(), batch["head_tokens"], 3
    n = batch["n_masked"]
    assert calls[0] == (t, t, True, batch["max_seqlen"], batch["max_seqlen"])  # encoder layer 0: self-attention
    assert (2 * b, t - ht, False, 1, batch["max_seqlen"]) in calls  # encoder last layer, clean CLS queries
    assert (ht, ht, True, batch["max_seqlen"], batch["max_seqlen"]) in calls  # its masked views, all rows
    assert calls[-1] == (n, ht, False, batch["max_masked"], batch["max_seqlen"])  # head last layer
    torch.testing.assert_close(outs["varlen"], outs["sdpa"], atol=5e-2, rtol=5e-2)
