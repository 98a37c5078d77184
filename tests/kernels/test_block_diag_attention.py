"""block_diag_attention: Triton (CPU interpreter) against the float64 reference, outputs and gradients."""

import importlib

import pytest
import torch

from kernels import block_diag_attention, block_diag_attention_ref
from tests.kernels.numerics import DTYPES, assert_within_2x, require_triton_path

# The package re-exports the function under the module's name, so `import kernels.block_diag_attention as m`
# would bind the function; the module itself comes from the import system.
bda = importlib.import_module("kernels.block_diag_attention")

# fp32 kernels differ from PyTorch's fp32 only in summation order; fp16 adds P's rounding before PV.
ATOL = {torch.float32: 2e-6, torch.float16: 5e-4, torch.bfloat16: 4e-3}  # bf16: 3 fewer mantissa bits


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)  # (S + 1,)


def _random_lens(n_seqs, max_len):
    """A length mix that always holds a length-1 sequence and one of max_len."""
    lens = torch.randint(1, max_len + 1, (n_seqs,)).tolist()
    lens[torch.randint(0, n_seqs, ()).item()] = 1
    lens[torch.randint(0, n_seqs, ()).item()] = max_len
    return lens


def _inputs(lens, n_heads, head_dim, dtype):
    T = sum(lens)
    q, k, v = (torch.randn(T, n_heads, head_dim, dtype=dtype) for _ in range(3))  # (T, H, D)
    return q, k, v, torch.randn(T, n_heads, head_dim, dtype=dtype), _cu(lens)


def _run(fn, q, k, v, do, cu, **kwargs):
    """Output and (dq, dk, dv) of fn for upstream gradient do."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v, cu, **kwargs)
    return (o, *torch.autograd.grad(o, (q, k, v), do.to(o.dtype)))


def _check_against_reference(lens, n_heads, head_dim, dtype, fn=None, scale=None):
    q, k, v, do, cu = _inputs(lens, n_heads, head_dim, dtype)
    require_triton_path(bda, q)
    fn = fn or (lambda q, k, v, cu: block_diag_attention(q, k, v, cu, max(lens), softmax_scale=scale))
    out = _run(fn, q, k, v, do, cu)
    ref = _run(block_diag_attention_ref, q.double(), k.double(), v.double(), do.double(), cu, softmax_scale=scale)
    pt = _run(block_diag_attention_ref, q, k, v, do, cu, softmax_scale=scale, upcast=False)
    for name, a, b, c in zip(("o", "dq", "dk", "dv"), out, ref, pt):
        assert a.dtype == dtype, f"{name} comes back as {a.dtype}, expected {dtype}"
        assert_within_2x(f"{name} lens={lens} D={head_dim} {dtype}", a, b, c, ATOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [16, 32])
def test_random_length_mixes(dtype, head_dim):
    for _ in range(3):
        n_seqs = int(torch.randint(2, 9, ()))
        _check_against_reference(_random_lens(n_seqs, max_len=int(torch.randint(2, 80, ()))), 2, head_dim, dtype)


@pytest.mark.parametrize("head_dim", [1, 7, 24, 41])
def test_odd_head_dims(head_dim):
    _check_against_reference(_random_lens(4, 37), 2, head_dim, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_sequence(dtype):
    _check_against_reference([97], 3, 16, dtype)


def test_all_length_one():
    _check_against_reference([1] * 13, 2, 16, torch.float32)


def test_hundreds_of_tiny_sequences():
    _check_against_reference(torch.randint(1, 4, (300,)).tolist(), 1, 16, torch.float16)


def test_many_short_and_one_long():
    _check_against_reference([*torch.randint(1, 6, (40,)).tolist(), 150], 1, 16, torch.float32)


def test_custom_softmax_scale():
    _check_against_reference(_random_lens(3, 20), 2, 16, torch.float32, scale=0.37)


def test_zero_length_sequences_are_skipped():
    _check_against_reference([3, 0, 5, 0, 0, 1], 2, 16, torch.float32)


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (16, 32), (32, 16)])
def test_multi_tile_loops(block_m, block_n):
    """Forced 16-row tiles: several query and key tiles per sequence, partial last tiles, both loop orders."""

    class SmallTiles(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, cu):
            o, lse = bda._attn_forward(q, k, v, cu, q.shape[-1] ** -0.5, block_m, block_n)
            ctx.save_for_backward(q, k, v, o, lse, cu)
            return o

        @staticmethod
        def backward(ctx, do):
            q, k, v, o, lse, cu = ctx.saved_tensors
            return (*bda._attn_backward(do, q, k, v, o, lse, cu, q.shape[-1] ** -0.5, block_m, block_n), None)

    _check_against_reference([1, 16, 17, 50, 33], 2, 16, torch.float32, fn=SmallTiles.apply)
    _check_against_reference([1, 16, 17, 50, 33], 2, 32, torch.float16, fn=SmallTiles.apply)


def test_tiles_override(monkeypatch):
    monkeypatch.setenv("MEXMA_ATTN_TILES", "16x32x2")
    assert bda._launch_config(1000, 10, 64, torch.float16)[:2] == (16, 32)
    _check_against_reference([1, 40, 17], 2, 16, torch.float32)
    for bad in ("64x32", "24x32x4", "64x32x3", "ax32x4"):
        monkeypatch.setenv("MEXMA_ATTN_TILES", bad)
        with pytest.raises(ValueError, match="MEXMA_ATTN_TILES"):
            bda._launch_config(1000, 10, 64, torch.float16)


def test_non_contiguous_qkv():
    """q, k, v as strided views of one fused (T, 3, H, D) projection, as a model produces them."""
    lens = _random_lens(5, 30)
    qkv = torch.randn(sum(lens), 3, 2, 16)
    q, k, v = qkv.unbind(1)  # each (T, H, D) with stride(0) = 3 * H * D
    do, cu = torch.randn_like(q), _cu(lens)
    require_triton_path(bda, q)
    out = _run(lambda *a: block_diag_attention(*a, max(lens)), q, k, v, do, cu)
    ref = _run(block_diag_attention_ref, q.double(), k.double(), v.double(), do.double(), cu)
    for name, a, b in zip(("o", "dq", "dk", "dv"), out, ref):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("block", [1, 16, 32, 64])
def test_block_table_covers_each_tile_once(block):
    lens = [*torch.randint(0, 100, (int(torch.randint(1, 30, ())),)).tolist(), 0, 1]
    cu = _cu(lens)
    seq, start, n_prog = bda._block_table(cu, sum(lens), block)
    assert seq.shape == start.shape == (n_prog,)
    tiles = sorted(zip(seq[start >= 0].tolist(), start[start >= 0].tolist()))
    expected = [(s, m) for s, length in enumerate(lens) for m in range(0, length, block)]
    assert tiles == expected


def test_block_table_cache_follows_in_place_edits():
    """The per-cu_seqlens table cache must miss after an in-place edit and for a new tensor with new values."""
    q, k, v, _, cu = _inputs([5, 20, 7], 2, 16, torch.float32)
    require_triton_path(bda, q)
    for lens in ([5, 20, 7], [20, 5, 7], [1, 1, 30]):
        cu.copy_(_cu(lens))  # same object, same total, new boundaries
        for bounds in (cu, _cu(lens)):
            out = block_diag_attention(q, k, v, bounds, 30)
            torch.testing.assert_close(out, block_diag_attention_ref(q, k, v, bounds))


def test_deterministic():
    """No atomics: two runs give bitwise equal outputs and gradients."""
    q, k, v, do, cu = _inputs(_random_lens(6, 50), 2, 16, torch.float32)
    require_triton_path(bda, q)
    fn = lambda q, k, v, cu: block_diag_attention(q, k, v, cu, 50)
    for a, b in zip(_run(fn, q, k, v, do, cu), _run(fn, q, k, v, do, cu)):
        assert torch.equal(a, b)


def test_inference_mode():
    """Inference tensors (eval under torch.inference_mode) have no version counter for the table cache."""
    q, k, v, _, cu = _inputs([4, 9, 1], 2, 16, torch.float32)
    require_triton_path(bda, q)
    with torch.inference_mode():
        q, k, v, cu = (t.clone() for t in (q, k, v, cu))
        out = block_diag_attention(q, k, v, cu, 9)
    torch.testing.assert_close(out, block_diag_attention_ref(q, k, v, cu))


def test_saves_no_quadratic_tensor():
    """Autograd keeps only (T, H, D) tensors, the (H, T) log-sum-exp and cu_seqlens: nothing T x T."""
    lens = [120, 130]
    q, k, v, do, cu = _inputs(lens, 1, 16, torch.float32)
    require_triton_path(bda, q)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        block_diag_attention(*(t.requires_grad_() for t in (q, k, v)), cu, 130)
    assert sizes and max(sizes) <= q.numel(), f"saved tensor sizes {sizes} exceed T*H*D={q.numel()}"


def test_mexma_kernels_ref_sends_calls_to_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(bda, "block_diag_attention_ref", lambda *a, **kw: calls.append(1) or a[0])
    q, k, v, _, cu = _inputs([3, 4], 1, 16, torch.float32)
    monkeypatch.setenv("MEXMA_KERNELS", "ref")
    block_diag_attention(q, k, v, cu, 4)
    assert calls == [1]
    monkeypatch.delenv("MEXMA_KERNELS")
    monkeypatch.setattr(bda, "_INTERPRET", False)  # a CPU tensor without the interpreter also takes the reference
    block_diag_attention(*(t.cpu() for t in (q, k, v, cu)), 4)
    assert calls == [1, 1]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda q, k, v, cu: (q, k[:-1], v, cu, 4), "share one"),
        (lambda q, k, v, cu: (q, k, v.double(), cu, 4), "share one dtype"),
        (lambda q, k, v, cu: (q, k, v, cu.long(), 4), "int32"),
        (lambda q, k, v, cu: (q, k, v, cu[:-1], 4), "from 0 to total_tokens=7"),
        (lambda q, k, v, cu: (q, k, v, cu, 3), "max_seqlen=3"),
        (lambda q, k, v, cu: (*(t[:, :, :1].expand(7, 1, 300) for t in (q, k, v)), cu, 4), "head_dim 300"),
    ],
)
def test_bad_inputs_name_the_problem(mutate, message):
    q, k, v, _, cu = _inputs([3, 4], 1, 16, torch.float32)
    require_triton_path(bda, q)
    if q.is_cuda and message in ("from 0 to total_tokens=7", "max_seqlen=3"):
        pytest.skip("cu_seqlens values are checked on CPU tensors only: on CUDA the check would sync the host")
    with pytest.raises(ValueError, match=message):
        block_diag_attention(*mutate(q, k, v, cu))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_larger_sweep(dtype, head_dim):
    for _ in range(2):
        _check_against_reference(_random_lens(int(torch.randint(2, 30, ())), 200), 4, head_dim, dtype)
