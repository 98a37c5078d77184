"""GPU-path pieces checked on CPU: a host-sync-free forward, the varlen adapter, and the `auto` selection logic.

The CUDA functions (varlen_attn, the kernel checks and timings) are monkeypatched: their logic and argument
mapping are tested here; `scripts/gpu_check.py` runs them for real on a GPU.
"""

import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import block_diag_attention_ref
from pipeline.data.collate import MexmaCollator
from pipeline.model import attention, backends, kernel_checks
from pipeline.model.mexma import ModelConfig, build_model
from tests.pipeline.test_collate import make_rows
from tests.pipeline.test_equivalence import SPECIAL, V, small_config

# aten ops that read a device value back to the host or give a data-dependent shape (each a sync on CUDA)
_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "bincount", "equal"}


class _NoHostSync(TorchDispatchMode):
    """Raise on any op that would synchronise a CUDA stream with the host (what set_sync_debug_mode reports)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.removeprefix("aten::")
        kwargs = kwargs or {}
        if name in _SYNC_OPS or (name == "repeat_interleave" and kwargs.get("output_size") is None):
            raise AssertionError(f"host sync inside the step: aten::{name}")
        if name.startswith("index") and any(_is_bool(t) for t in _index_args(args)):  # x[mask]: nonzero inside
            raise AssertionError(f"host sync inside the step: aten::{name} with a boolean mask")
        return func(*args, **kwargs)


def _index_args(args):
    indices = args[1] if len(args) > 1 else ()
    return indices if isinstance(indices, (list, tuple)) else ()


def _is_bool(t):
    return torch.is_tensor(t) and t.dtype == torch.bool


def _forbid_python_syncs(monkeypatch):
    for method in ("item", "tolist", "__int__", "__bool__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, method, lambda *a, _m=method, **k: pytest.fail(f"Tensor.{_m} in the step"))


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_forward_and_backward_make_no_host_sync(monkeypatch, gradient_checkpointing):
    """no .item() / int / bool / nonzero / boolean indexing in the model's forward + backward."""
    cfg = small_config(attention="sdpa", kernels=False, gradient_checkpointing=gradient_checkpointing)
    model = build_model(cfg, V)
    batch = MexmaCollator(SPECIAL, V)(make_rows(6, vocab=V))
    with monkeypatch.context() as m, _NoHostSync():
        _forbid_python_syncs(m)
        out = model(**batch)
        out["loss"].backward()
    for key in ("loss", "mlm_loss", "cls_loss", "koleo_loss", "n_masked"):
        assert torch.is_tensor(out[key]) and out[key].ndim == 0, key
    assert int(out["n_masked"]) == batch["n_masked"] == batch["n_masked_src"] + batch["n_masked_trg"]


def test_the_sync_detector_catches_what_it_should(monkeypatch):
    """Guard the guard: the old forward's calls (nonzero, int(tensor), boolean masks) all raise under it."""
    x = torch.arange(6)
    for bad in (lambda: (x > 2).nonzero(), lambda: int(x.sum()), lambda: x[x > 2], lambda: x.sum().item()):
        with pytest.raises(AssertionError, match="host sync"), _NoHostSync():
            bad()
    with monkeypatch.context() as m:
        _forbid_python_syncs(m)
        with pytest.raises(pytest.fail.Exception, match="Tensor.__bool__"):
            bool(x.sum())


def test_forward_needs_the_collator_keys():
    model = build_model(small_config(), V)
    batch = MexmaCollator(SPECIAL, V)(make_rows(3, vocab=V))
    del batch["mlm_positions"]
    with pytest.raises(ValueError, match="batch lacks \\['mlm_positions'\\]"):
        model(**batch)


def _fake_varlen(calls, with_scale=True):
    """Stands in for torch's varlen_attn on CPU: records the call, computes the reference."""

    def check(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale):
        calls.append({"cu_k_is_q": cu_seq_k is cu_seq_q, "max": (max_q, max_k), "dtype": query.dtype})
        assert key.shape == value.shape and query.shape[1:] == key.shape[1:] and query.dim() == 3  # (T, H, D)
        assert cu_seq_q.dtype == torch.int32 and isinstance(max_q, int)
        if cu_seq_k is not cu_seq_q:  # a query subset (the models' last layers): tests/pipeline/test_model_savings.py
            return attention.subset_attention_ref(query, key, value, cu_seq_q, cu_seq_k, scale)
        return block_diag_attention_ref(query, key, value, cu_seq_q, max_q, softmax_scale=scale)

    if with_scale:
        return lambda q, k, v, cq, ck, mq, mk, *, scale=None: check(q, k, v, cq, ck, mq, mk, scale)
    return lambda q, k, v, cq, ck, mq, mk: check(q, k, v, cq, ck, mq, mk, None)


@pytest.mark.parametrize("with_scale", [True, False])
def test_varlen_adapter_maps_arguments(monkeypatch, with_scale):
    """Self-attention: cu_seqlens and max_seqlen for both q and k; the scale passed or folded into q."""
    calls = []
    monkeypatch.setattr(attention, "_varlen_attn", _fake_varlen(calls, with_scale))
    lens = [1, 7, 41, 3]
    cu = torch.tensor([0, 1, 8, 49, 52], dtype=torch.int32)
    q, k, v = (torch.randn(52, 2, 16, dtype=torch.bfloat16) for _ in range(3))
    out = attention.varlen_attention(q, k, v, cu, max(lens), 0.3)
    ref = block_diag_attention_ref(q, k, v, cu, softmax_scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    assert calls == [{"cu_k_is_q": True, "max": (41, 41), "dtype": torch.bfloat16}]
    with pytest.raises(ValueError, match="fp16/bf16"):
        attention.varlen_attention(q.float(), k.float(), v.float(), cu, 41, 0.3)
    monkeypatch.setattr(attention, "_varlen_attn", None)
    with pytest.raises(RuntimeError, match="lacks"):
        attention.varlen_attention(q, k, v, cu, 41, 0.3)


def test_varlen_backend_through_the_model_matches_sdpa(monkeypatch):
    """attention="varlen" wires the adapter into both encoder and head (bf16 autocast on CPU)."""
    calls = []
    monkeypatch.setattr(attention, "_varlen_attn", _fake_varlen(calls))
    batch = MexmaCollator(SPECIAL, V)(make_rows(3, vocab=V))
    outs = {}
    for backend in ("varlen", "sdpa"):
        torch.manual_seed(0)
        model = build_model(small_config(attention=backend), V).eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[backend] = model(**batch)["loss"]
    n_layers = small_config().num_layers + small_config().head_layers
    assert len(calls) == n_layers + 1  # the encoder's last layer: masked views + a clean-CLS query-subset call
    torch.testing.assert_close(outs["varlen"], outs["sdpa"], atol=5e-2, rtol=5e-2)


def test_resolve_auto_never_picks_the_unchecked_kernel(monkeypatch):
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)
    monkeypatch.setattr(attention, "_varlen_attn", object())
    cuda = torch.device("cuda")
    assert backends.resolve_backend("auto", cuda, torch.bfloat16) == "varlen"
    assert backends.resolve_backend("auto", cuda, torch.float32) == "sdpa"  # FlashAttention has no fp32
    assert backends.resolve_backend("auto", torch.device("cpu"), torch.bfloat16) == "sdpa"
    monkeypatch.setenv("MEXMA_KERNELS", "ref")
    assert backends.resolve_backend("kernel", cuda, torch.bfloat16) == "ref"
    assert ModelConfig(attention="varlen").validate().attention == "varlen"


def _select(monkeypatch, check, ms, dtype=torch.bfloat16, head_dim=64):
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)
    monkeypatch.setattr(attention, "_varlen_attn", object())
    timer = lambda *a: ms if not isinstance(ms, Exception) else (_ for _ in ()).throw(ms)  # noqa: E731
    return backends.select_backend("cuda", dtype, 16, head_dim, [40] * 100, check=lambda *a: check, timer=timer)


def test_select_keeps_the_kernel_only_when_right_and_not_slower(monkeypatch, caplog):
    ok = {"ok": True, "max_err": 1e-3, "tol": 2e-3}
    name, report = _select(monkeypatch, ok, {"kernel": 1.0, "varlen": 1.2})
    assert name == "kernel" and report["backend"] == "kernel" and report["ms"]["varlen"] == 1.2
    assert report["check"] == ok and (report["heads"], report["head_dim"], report["tokens"]) == (16, 64, 4000)
    with caplog.at_level(logging.WARNING, logger="pipeline.model.backends"):
        name, report = _select(monkeypatch, ok, {"kernel": 1.5, "varlen": 1.2})
    assert name == "varlen" and "1.500 ms vs varlen 1.200 ms" in report["reason"]
    assert "kernel slower" in caplog.text


def test_select_falls_back_with_the_error(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.model.backends"):
        name, report = _select(monkeypatch, {"ok": False, "error": "CompilationError: out of resources"}, {})
    assert name == "varlen" and "out of resources" in report["reason"] and "out of resources" in caplog.text
    name, report = _select(monkeypatch, {"ok": False, "max_err": 0.5, "tol": 0.01}, {})
    assert name == "varlen" and "max error 0.5 > tolerance 0.01" in report["reason"]
    name, report = _select(monkeypatch, {"ok": True}, RuntimeError("timer broke"))
    assert name == "varlen" and "timer broke" in report["reason"]
    name, report = _select(monkeypatch, {"ok": True}, {"kernel": 1.0, "sdpa": 2.0}, dtype=torch.float32)
    assert name == "kernel" and report["ms"] == {"kernel": 1.0, "sdpa": 2.0}  # no varlen in fp32: sdpa baseline


def test_select_a_raising_check_is_a_failed_check(monkeypatch):
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)

    def broken(*a):
        raise RuntimeError("triton: no kernel image")

    name, report = backends.select_backend("cuda", torch.bfloat16, 8, 128, [30], check=broken)
    assert name in ("varlen", "sdpa") and "no kernel image" in report["check"]["error"]


def test_select_off_cuda_and_forced_ref(monkeypatch):
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)
    never = lambda *a: pytest.fail("no measurement off CUDA")  # noqa: E731
    assert backends.select_backend("cpu", torch.float32, 4, 16, [5], check=never, timer=never)[0] == "sdpa"
    assert backends.select_koleo("cpu", torch.float32, 8, 16, check=never, timer=never)[0] is True
    monkeypatch.setenv("MEXMA_KERNELS", "ref")
    assert backends.select_backend("cuda", torch.bfloat16, 4, 16, [5], check=never)[0] == "ref"
    assert backends.select_koleo("cuda", torch.bfloat16, 8, 16, check=never)[0] is False


def test_koleo_guard(monkeypatch):
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)
    ok = lambda *a: {"ok": True}  # noqa: E731
    use, report = backends.select_koleo(
        "cuda", torch.bfloat16, 150, 1024, check=ok, timer=lambda *a: {"fused": 1, "ref": 3}
    )
    assert use is True and report["backend"] == "fused"
    use, report = backends.select_koleo("cuda", torch.bfloat16, 150, 1024, check=lambda *a: {"ok": False, "error": "x"})
    assert use is False and report["backend"] == "ref"


def test_model_select_backends_applies_and_reports(monkeypatch):
    """The model keeps the per-stack choice (encoder 4 x 16, head 2 x 32 here) and the KoLeo guard's answer."""
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)
    model = build_model(small_config(num_heads=4, head_heads=2), V)
    seen = []

    def check(device, dtype, heads, head_dim, lengths):
        seen.append((heads, head_dim))
        return {"ok": heads == 4}

    report = model.select_backends(
        "cuda",
        torch.bfloat16,
        [12] * 12,
        check=check,
        timer=lambda *a: {"kernel": 1.0, "varlen": 2.0, "sdpa": 2.0},
        koleo_check=lambda *a: {"ok": False, "error": "bad"},
    )
    assert seen == [(4, 16), (2, 32)]
    assert report["encoder"]["backend"] == "kernel" and report["head"]["backend"] in ("varlen", "sdpa")
    assert report["koleo"]["backend"] == "ref" and model.backends.koleo_kernel is False
    assert (model.backends.encoder, model.backends.head) == ("kernel", report["head"]["backend"])


def test_the_real_checks_run_and_catch_a_wrong_kernel(monkeypatch):
    """check_attention_kernel / check_koleo_kernel on CPU (the kernels through the interpreter when it is on)."""
    import kernels

    monkeypatch.delenv("MEXMA_KERNELS", raising=False)
    assert kernel_checks.check_attention_kernel("cpu", torch.float32, 2, 16, [5, 9, 1, 30])["ok"]
    assert kernel_checks.check_koleo_kernel("cpu", torch.float32, 9, 16)["ok"]
    right = kernels.block_diag_attention
    monkeypatch.setattr(kernels, "block_diag_attention", lambda *a, **k: 1.01 * right(*a, **k))
    bad = kernel_checks.check_attention_kernel("cpu", torch.float32, 2, 16, [5, 9])
    assert not bad["ok"] and bad["max_err"] > bad["tol"]


def test_resolved_backends_state_every_rule_in_one_object(monkeypatch):
    """Backends: the config's names before selection, the query-subset rule, the dropout fallback, KoLeo's switch."""
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)
    monkeypatch.setattr(attention, "_varlen_attn", object())
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    chosen = backends.Backends.from_config(ModelConfig(attention="kernel"))
    assert (chosen.encoder, chosen.head, chosen.koleo_kernel) == ("kernel", "kernel", True)
    assert chosen.attention("encoder", cuda, torch.bfloat16, training=True) == "kernel"
    assert backends.Backends.subset("kernel", cuda, torch.bfloat16, 64) == "varlen"  # self-attention-only kernel
    assert backends.Backends.subset("kernel", cuda, torch.bfloat16, 12) == "sdpa"  # head_dim not a multiple of 8
    assert backends.Backends.subset("kernel", cpu, torch.float32, 64) == "sdpa"
    assert backends.Backends.subset("ref", cuda, torch.bfloat16, 64) == "ref"
    dropout = backends.Backends.from_config(ModelConfig(attention="auto", attention_dropout=0.1))
    assert dropout.attention("head", cuda, torch.bfloat16, training=True) == "sdpa"
    assert dropout.attention("head", cuda, torch.bfloat16, training=False) == "varlen"
    assert not backends.Backends.from_config(ModelConfig(kernels=False)).koleo()
    assert not backends.Backends.from_config(ModelConfig(attention="ref")).koleo()
    monkeypatch.setenv("MEXMA_KERNELS", "ref")
    assert not chosen.koleo() and chosen.attention("encoder", cuda, torch.bfloat16, training=True) == "ref"
