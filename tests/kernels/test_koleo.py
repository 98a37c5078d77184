"""koleo_loss: fused Triton KoLeo (CPU interpreter) against the float64 reference, loss, neighbours, gradients."""

import pytest
import torch
import torch.nn.functional as F

import kernels.koleo as kol
from kernels import koleo_loss, koleo_loss_ref
from tests.kernels.numerics import DTYPES, assert_within_2x, require_triton_path

ATOL = 1e-6  # everything after the input load is fp32; gradients here are O(1 / B)


def _loss_and_grad(fn, x):
    x = x.detach().requires_grad_()
    loss = fn(x)
    return loss, torch.autograd.grad(loss, x)[0]


def _check_against_reference(x):
    """Kernel vs float64 reference; the same-precision PyTorch path is the fp32 reference on the same input."""
    require_triton_path(kol, x)
    loss, grad = _loss_and_grad(koleo_loss, x)
    loss_ref, grad_ref = _loss_and_grad(koleo_loss_ref, x.double())
    loss_pt, grad_pt = _loss_and_grad(koleo_loss_ref, x)
    assert loss.dtype == torch.float32 and grad.dtype == x.dtype
    assert_within_2x(f"loss B={x.shape[0]} D={x.shape[1]} {x.dtype}", loss, loss_ref, loss_pt, ATOL)
    assert_within_2x(f"grad B={x.shape[0]} D={x.shape[1]} {x.dtype}", grad, grad_ref, grad_pt, ATOL)


def _brute_force_nn(x):
    xn = F.normalize(x.double(), dim=-1)
    dots = xn @ xn.t()
    dots.fill_diagonal_(-2.0)
    return dots.argmax(dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [2, 3, 7, 41, 129])
def test_matches_reference(B, dtype):
    D = int(torch.randint(8, 70, ()))
    _check_against_reference(torch.randn(B, D, dtype=dtype) * float(torch.rand(()) * 4 + 0.1))


def test_neighbours_match_brute_force_across_tiles():
    x = torch.randn(150, 24)
    require_triton_path(kol, x)
    for block in (None, 16):  # default 64 x 64 tiles (3 column tiles, partial last) and 16 x 16 tiles
        _, _, _, nn, dist = kol._koleo_forward(x, 1e-8, block_m=block, block_n=block)
        assert torch.equal(nn.long(), _brute_force_nn(x))
        torch.testing.assert_close(dist, (F.normalize(x, dim=-1) - F.normalize(x, dim=-1)[nn.long()]).norm(dim=-1))


def test_ties_pick_the_smallest_index():
    # Exact ties: rows 0 and 1 are orthogonal unit vectors, row 2 = (1, 1) / sqrt(2) has dot 1/sqrt(2) with both,
    # rows 3 and 4 duplicate row 5's direction at other scales (dot 1 with each other and with 5).
    x = torch.zeros(6, 16)
    x[0, 0] = x[1, 1] = 1.0
    x[2, :2] = 3.0
    x[3:6, 4] = torch.tensor([2.0, 5.0, 0.5])
    require_triton_path(kol, x)
    for block in (None, 16):
        _, _, _, nn, _ = kol._koleo_forward(x, 1e-8, block_m=block, block_n=block)
        assert nn.tolist() == [2, 2, 0, 4, 3, 3]
    assert nn.tolist() == _brute_force_nn(x).tolist()
    _check_against_reference(x)


def test_duplicated_rows_give_a_finite_loss():
    x = torch.randn(9, 32)
    x[4] = x[1]
    x[7] = x[8] = x[2]  # a triple
    require_triton_path(kol, x)
    loss, grad = _loss_and_grad(koleo_loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    _check_against_reference(x)


def test_hub_row_chosen_by_every_other_row():
    """Row 0 is every row's nearest neighbour: the backward's gather runs a fan-in of B - 1 for one row."""
    # Offsets r_i b_i orthonormal to the centre and to each other: |x_i - x_0| = r_i < |x_i - x_j| =
    # sqrt(r_i^2 + r_j^2); distinct r_i = 0.05 (1 + 0.1 i) give row 0 the unique neighbour 1 (no float ties).
    basis, _ = torch.linalg.qr(torch.randn(32, 21))  # (32, 21) orthonormal columns
    center = basis[:, 0] * 3.0
    radii = 0.05 * (1 + 0.1 * torch.arange(20.0))  # (20,)
    x = torch.cat([center[None], center + radii[:, None] * basis[:, 1:].t()])  # (21, 32)
    require_triton_path(kol, x)
    assert (_brute_force_nn(x)[1:] == 0).all()
    _check_against_reference(x)


def test_zero_and_tiny_rows_follow_normalize_clamp():
    # |x| < eps: F.normalize divides by eps, not |x|; the backward takes the same branch.
    x = torch.randn(7, 16)
    x[2] = 0.0
    x[5] = 1e-10 * torch.randn(16)
    _check_against_reference(x)


def test_batch_of_one_follows_the_reference():
    x = torch.randn(1, 16)
    require_triton_path(kol, x)
    loss, grad = _loss_and_grad(koleo_loss, x)
    torch.testing.assert_close(loss, koleo_loss_ref(x))  # its own neighbour: -log(eps)
    assert torch.equal(grad, torch.zeros_like(x))


def test_strided_inputs():
    base = torch.randn(40, 64)
    for x in (base[::2], base[:, ::2], base.t()[:20]):  # row stride 128, column stride 2, transposed
        _check_against_reference(x)


def test_upstream_gradient_scales_linearly():
    x = torch.randn(17, 32)
    require_triton_path(kol, x)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    koleo_loss(x1).backward()
    (3.5 * koleo_loss(x2)).backward()
    torch.testing.assert_close(x2.grad, 3.5 * x1.grad)


def test_deterministic():
    x = torch.randn(70, 24)
    x[5] = x[9]  # a fan-in of several rows into some neighbours, summed in CSR order
    require_triton_path(kol, x)
    (loss1, grad1), (loss2, grad2) = _loss_and_grad(koleo_loss, x), _loss_and_grad(koleo_loss, x)
    assert torch.equal(loss1, loss2) and torch.equal(grad1, grad2)


def test_saves_no_quadratic_tensor():
    x = torch.randn(200, 16, requires_grad=True)
    require_triton_path(kol, x)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        koleo_loss(x)
    assert sizes and max(sizes) <= x.numel(), f"saved tensor sizes {sizes} exceed B*D={x.numel()}"


def test_mexma_kernels_ref_sends_calls_to_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(kol, "koleo_loss_ref", lambda x, eps: calls.append(1) or x.sum())
    x = torch.randn(4, 8)
    monkeypatch.setenv("MEXMA_KERNELS", "ref")
    koleo_loss(x)
    assert calls == [1]
    monkeypatch.delenv("MEXMA_KERNELS")
    monkeypatch.setattr(kol, "_INTERPRET", False)
    koleo_loss(x)
    assert calls == [1, 1]


@pytest.mark.parametrize(
    "x,message",
    [
        (torch.randn(8), "non-empty \\(B, D\\)"),
        (torch.randn(0, 8), "non-empty \\(B, D\\)"),
        (torch.randn(4, 8, dtype=torch.float64), "fp16/bf16/fp32"),
        (torch.randn(2, 1).expand(2, 20000), "D=20000"),
    ],
)
def test_bad_inputs_name_the_problem(x, message):
    require_triton_path(kol, x)
    with pytest.raises(ValueError, match=message):
        koleo_loss(x)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_larger_batches(dtype):
    for B, D in ((500, 128), (1031, 64)):
        _check_against_reference(torch.randn(B, D, dtype=dtype))
