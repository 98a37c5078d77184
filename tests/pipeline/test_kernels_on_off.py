"""Kernels on vs off: attention through the Triton block-diagonal kernel and KoLeo through the fused
kernel give the losses and gradients of the padded reference. On CPU this needs TRITON_INTERPRET=1 (set by
`make test`) before `kernels` is imported; the interpreter is slow, so the model is very small: hidden 32, 2 heads
(head_dim 16), about 40 tokens.
"""

import pytest
import torch
import triton

from pipeline.data.collate import MexmaCollator
from pipeline.model.mexma import build_model
from pipeline.model.reference import PaddedMexma, unpack_to_padded
from tests.pipeline.test_equivalence import LOSSES, SPECIAL, V, assert_same_grads, small_config

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or triton.knobs.runtime.interpret),
    reason="Triton kernels need CUDA or TRITON_INTERPRET=1 set before import (make test sets it)",
)


def kernel_config(**overrides):
    """hidden 32, 2 heads of 16, one encoder and one head layer; attention and KoLeo through the kernels."""
    shape = {"hidden_size": 32, "num_heads": 2, "ffn_size": 64, "head_layers": 1, "head_heads": 2, "head_ffn": 64}
    return small_config(num_layers=1, kernels=True, **shape, **overrides)


def test_kernel_attention_matches_reference(monkeypatch):
    monkeypatch.delenv("MEXMA_KERNELS", raising=False)
    calls = []
    import kernels

    real = kernels.block_diag_attention
    monkeypatch.setattr(kernels, "block_diag_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    koleo_calls, real_koleo = [], kernels.koleo_loss
    monkeypatch.setattr(kernels, "koleo_loss", lambda x, **k: koleo_calls.append(x.shape[0]) or real_koleo(x, **k))
    rows = [
        {"src_ids": [0, 5, 6, 7, 2], "trg_ids": [0, 8, 9, 2]},
        {"src_ids": [0, 10, 11, 12, 13, 14, 2], "trg_ids": [0, 15, 16, 17, 18, 2]},
    ]
    batch = MexmaCollator(SPECIAL, V, seed=2)(rows)
    assert 35 <= batch["input_ids"].numel() <= 50
    model = build_model(kernel_config(attention="kernel"), V)
    reference = PaddedMexma.from_packed(model)
    out, ref = model(**batch), reference(**unpack_to_padded(batch))
    out["loss"].backward()
    ref["loss"].backward()
    # the encoder's one layer: its masked views through the kernel; the clean CLS queries and the head's one layer
    # (queries at the masked positions only) are query-subset calls, which the kernel leaves to SDPA off CUDA
    assert len(calls) == 1
    assert koleo_calls == [2, 2]  # both sides' KoLeo through the fused kernel
    for key in LOSSES:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
    assert_same_grads(model, reference, rtol=1e-4)


def test_env_forces_reference_everywhere(monkeypatch):
    """MEXMA_KERNELS=ref: neither kernel runs, and the numbers stay those of the kernel path."""
    import kernels

    rows = [{"src_ids": [0, 5, 6, 2], "trg_ids": [0, 8, 9, 10, 2]}] * 3
    batch = MexmaCollator(SPECIAL, V, seed=4)(rows)
    model = build_model(kernel_config(attention="kernel"), V)
    on = model(**batch)
    monkeypatch.setenv("MEXMA_KERNELS", "ref")
    for name in ("block_diag_attention", "koleo_loss"):
        monkeypatch.setattr(kernels, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} called under MEXMA_KERNELS=ref"))
    off = model(**batch)
    for key in LOSSES:
        torch.testing.assert_close(on[key], off[key], rtol=1e-5, atol=1e-5, msg=key)
