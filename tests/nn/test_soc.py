"""SkewOrthogonalConv2d: skew-symmetric kernel, norm bound, norm preservation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from orthocond.nn import SkewOrthogonalConv2d, conv_norm_bound_matrices


def _series_bound(terms: int, scale: float = 0.7) -> float:
    """Σ_{i>T} scale^i / i!: the truncation error of the exponential series."""
    return sum(scale**i / math.factorial(i) for i in range(terms + 1, terms + 40))


def _operator_norm(kernel: torch.Tensor, size: int = 10, iters: int = 100) -> float:
    """Power iteration on the zero-padded conv operator of ``kernel`` (lower estimate)."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, kernel.shape[1], size, size, generator=g, dtype=kernel.dtype)
    pad = (kernel.shape[2] // 2, kernel.shape[3] // 2)
    for _ in range(iters):
        v = F.conv_transpose2d(F.conv2d(v, kernel, padding=pad), kernel, padding=pad)
        v = v / v.norm()
    return F.conv2d(v, kernel, padding=pad).norm().item()


@pytest.mark.parametrize(
    "cin, cout, k, stride, hw", [(4, 4, 3, 1, 8), (3, 12, 3, 2, 8), (2, 8, 5, 2, 10), (6, 6, 1, 1, 5)]
)
def test_norm_and_inner_products_preserved(cin, cout, k, stride, hw):
    """C_out = C_in·s²: exp(L) is orthogonal; the truncated series is off by <= Σ_{i>T} 0.7^i/i!."""
    torch.manual_seed(0)
    soc = SkewOrthogonalConv2d(cin, cout, k, stride=stride, bias=False).double()
    x = torch.randn(3, cin, hw, hw, dtype=torch.float64)
    for training, terms in ((True, 5), (False, 12)):
        soc.train(training)
        y = soc(x)
        assert y.shape == (3, cout, hw // stride, hw // stride)
        ratio = y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
        err = (ratio - 1).abs().max().item()
        assert err <= _series_bound(terms) + 1e-14  # T=5: 1.8e-4, T=12: 1.6e-12
        gram_x = x.flatten(1) @ x.flatten(1).T
        gram_y = y.flatten(1) @ y.flatten(1).T
        assert (gram_y - gram_x).abs().max() <= 3 * _series_bound(terms) * gram_x.abs().max()
    assert err < 1e-12  # eval, float64


def test_kernel_is_skew_symmetric_and_bounded():
    torch.manual_seed(1)
    soc = SkewOrthogonalConv2d(5, 5, 3).double()
    S = soc.skew_symmetric_part().detach()
    a = torch.randn(2, 5, 7, 7, dtype=torch.float64)
    b = torch.randn(2, 5, 7, 7, dtype=torch.float64)
    lhs = (F.conv2d(a, S, padding=1) * b).sum()
    rhs = (a * F.conv2d(b, S, padding=1)).sum()
    assert abs(lhs + rhs) < 1e-12 * lhs.abs()  # <Sa, b> = -<a, Sb>
    # the scaled kernel's operator norm stays below 0.7
    L = soc.skew_kernel().detach()
    assert _operator_norm(L) <= 0.7 * (1 + 1e-6)


def test_norm_bound_is_converged_four_matrix_bound():
    torch.manual_seed(2)
    soc = SkewOrthogonalConv2d(4, 6, 3).double()
    S = soc.skew_symmetric_part().detach()
    exact = 3 * min(torch.linalg.matrix_norm(M, 2).item() for M in conv_norm_bound_matrices(S))
    assert abs(soc.norm_bound().item() - exact) < 1e-6 * exact
    assert _operator_norm(S) <= exact * (1 + 1e-9)  # it is an upper bound


def test_conv_norm_bound_matrices_shapes_and_entries():
    K = torch.randn(2, 3, 5, 7)
    R1, R2, R3, R4 = conv_norm_bound_matrices(K)
    assert R1.shape == (10, 21) and R2.shape == (14, 15) and R3.shape == (2, 105)
    assert R4.shape == (70, 3)
    o, i, p, q = 1, 2, 3, 4
    assert R1[o * 5 + p, i * 7 + q] == K[o, i, p, q]
    assert R2[o * 7 + q, i * 5 + p] == K[o, i, p, q]
    assert R4[(o * 5 + p) * 7 + q, i] == K[o, i, p, q]


def test_power_vectors_update_in_training_only():
    soc = SkewOrthogonalConv2d(3, 3, 3)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        soc.weight.mul_(torch.rand_like(soc.weight))  # the old vectors are stale now
    before = soc.power_vectors.clone()
    soc.eval()(x)
    assert torch.equal(soc.power_vectors, before)
    soc.train()(x)
    assert not torch.equal(soc.power_vectors, before)


def test_weight_parameter_gradient_and_state_dict():
    soc = SkewOrthogonalConv2d(3, 8, 3)
    assert soc.channels == 8 and soc.weight.shape == (8, 8, 3, 3)
    assert abs(soc.weight.std().item() - 8**-0.5) < 0.05
    y = soc(torch.randn(2, 3, 6, 6))
    assert y.shape == (2, 8, 6, 6)
    y.square().sum().backward()
    assert soc.weight.grad is not None and torch.isfinite(soc.weight.grad).all()
    assert set(soc.state_dict()) == {"weight", "bias", "power_vectors", "num_train_forwards"}
    other = SkewOrthogonalConv2d(3, 8, 3)
    other.load_state_dict(soc.state_dict())
    x = torch.randn(1, 3, 6, 6)
    assert torch.equal(other.eval()(x), soc.eval()(x))


def _perturb(soc: SkewOrthogonalConv2d, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        soc.weight.add_(0.3 * torch.randn(soc.weight.shape, generator=g))


def test_state_dict_round_trip_keeps_refresh_counter_and_resumed_run_matches():
    """The training-forward counter that schedules the 50-iteration power refresh (every 200
    forwards) is a buffer: a model loaded from a checkpoint refreshes on the same steps."""
    torch.manual_seed(0)
    soc = SkewOrthogonalConv2d(3, 3, 3)
    x = torch.randn(2, 3, 6, 6)
    for step in range(3):
        _perturb(soc, step)
        soc(x)
    assert int(soc.num_train_forwards) == 3
    state = soc.state_dict()
    assert int(state["num_train_forwards"]) == 3
    resumed = SkewOrthogonalConv2d(3, 3, 3)
    resumed.load_state_dict(state)
    assert int(resumed.num_train_forwards) == 3
    for module in (soc, resumed):  # step 4: 1 power iteration in both (a reset counter: 50)
        _perturb(module, 10)
    torch.testing.assert_close(resumed(x), soc(x), rtol=0, atol=0)
    assert torch.equal(resumed.power_vectors, soc.power_vectors)
    assert int(resumed.num_train_forwards) == int(soc.num_train_forwards) == 4
    soc.reset_parameters()
    assert int(soc.num_train_forwards) == 0
    # a checkpoint written before the counter was a buffer still loads (counter 0)
    old = soc.state_dict()
    del old["num_train_forwards"]
    old._metadata[""]["version"] = 1
    resumed.load_state_dict(old)
    assert int(resumed.num_train_forwards) == 0


def test_channel_slicing_and_zero_weight():
    soc = SkewOrthogonalConv2d(4, 2, 3, stride=2)  # c = 16, keep 2
    assert soc.channels == 16
    assert soc(torch.randn(1, 4, 4, 4)).shape == (1, 2, 2, 2)
    ident = SkewOrthogonalConv2d(3, 3, 3, bias=False)
    with torch.no_grad():
        ident.weight.zero_()
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(ident(x), x)  # exp(0) = I, no NaN from the zero norm bound


def test_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        SkewOrthogonalConv2d(3, 3, 2)
    with pytest.raises(TypeError, match="kernel_size"):
        SkewOrthogonalConv2d(3, 3, 3.0)
    with pytest.raises(ValueError, match="stride"):
        SkewOrthogonalConv2d(3, 3, 3, stride=0)
    with pytest.raises(ValueError, match="bound_scale"):
        SkewOrthogonalConv2d(3, 3, 3, bound_scale=1.5)
    soc = SkewOrthogonalConv2d(3, 12, 3, stride=2)
    with pytest.raises(ValueError, match="divisible by 2"):
        soc(torch.randn(1, 3, 5, 4))
    with pytest.raises(ValueError, match="3 channels"):
        soc(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match="4 dims"):
        soc(torch.randn(3, 4, 4))


def test_autocast_bound_in_float32():
    soc = SkewOrthogonalConv2d(4, 4, 3).eval()
    ref = soc.skew_kernel()
    x = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        L = soc.skew_kernel()
        y = soc(x)
    assert L.dtype == torch.float32 and torch.equal(L, ref)
    assert torch.isfinite(y).all()
    assert abs(y.float().norm() / x.norm() - 1) < 2e-2  # bfloat16 convolutions


def test_layer_used_twice_before_backward_and_under_checkpoint():
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    soc = SkewOrthogonalConv2d(4, 4, 3)
    x = torch.randn(2, 4, 8, 8)
    soc(soc(x)).sum().backward()  # weight sharing: two training forwards, one backward
    assert soc.weight.grad is not None and torch.isfinite(soc.weight.grad).all()
    soc.zero_grad()
    y = checkpoint(soc, x, use_reentrant=False)
    y.sum().backward()
    assert torch.isfinite(soc.weight.grad).all()
