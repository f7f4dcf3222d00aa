"""DecorrelatedBatchNorm1d/2d and the functional zca_whiten."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orthocond.nn import (
    DecorrelatedBatchNorm1d,
    DecorrelatedBatchNorm2d,
    zca_whiten,
    zca_whitening_matrix,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _correlated(n=16, c=6, hw=(4, 4), dtype=torch.float64, seed=0):
    """(n, c, *hw) data with a strongly mixed channel covariance and a non-zero mean."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=torch.float64)
    z = torch.randn(n, c, *hw, generator=g, dtype=torch.float64)
    x = torch.einsum("ij,nj...->ni...", mix, z) + torch.arange(c, dtype=torch.float64).view(
        1, c, *([1] * len(hw))
    )
    return x.to(dtype)


def _group_matrix(x: np.ndarray, groups: int) -> np.ndarray:
    """(N, C, *) -> (G, c, N*L) in numpy."""
    n, channels = x.shape[:2]
    return x.reshape(n, groups, channels // groups, -1).transpose(1, 2, 0, 3).reshape(
        groups, channels // groups, -1
    )


def _np_inv_sqrt(S: np.ndarray) -> np.ndarray:
    lam, U = np.linalg.eigh(S)
    return (U / np.sqrt(lam)[..., None, :]) @ np.swapaxes(U, -1, -2)


def _np_reference(x, mean, cov, eps, groups, weight=None, bias=None):
    """(Σ + εI)^{-1/2}(x - μ) per group, then affine, in float64 numpy."""
    xg = _group_matrix(x, groups)
    c = xg.shape[1]
    W = _np_inv_sqrt(cov + eps * np.eye(c))
    y = W @ (xg - mean.reshape(groups, c, 1))
    if weight is not None:
        y = y * weight.reshape(groups, c, 1) + bias.reshape(groups, c, 1)
    n = x.shape[0]
    return y.reshape(groups, c, n, -1).transpose(2, 0, 1, 3).reshape(x.shape)


# -- train mode ---------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 2, 3])
def test_train_mode_whitens_each_group(groups):
    x = _correlated()
    eps = 1e-5
    y = DecorrelatedBatchNorm2d(6, groups=groups, eps=eps).double()(x)
    yg = _group_matrix(y.detach().numpy(), groups)
    xg = _group_matrix(x.numpy(), groups)
    cov_x = np.stack([np.cov(g, bias=True) for g in xg])
    cov_y = np.stack([np.cov(g, bias=True) for g in yg])
    c = 6 // groups
    # exact identity: cov(x̂) = I - ε(Σ + εI)^{-1}
    expected = np.eye(c) - eps * np.linalg.inv(cov_x + eps * np.eye(c))
    assert np.abs(cov_y - expected).max() < 1e-10
    assert np.abs(cov_y - np.eye(c)).max() < 1e-2  # identity up to ε/λ_min
    assert np.abs(yg.mean(-1)).max() < 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_train_mode_float32(device):
    x = _correlated(dtype=torch.float32).to(device)
    y = DecorrelatedBatchNorm2d(6, groups=2, eps=1e-5).to(device)(x)
    assert y.dtype == torch.float32
    yg = _group_matrix(y.detach().cpu().double().numpy(), 2)
    cov_y = np.stack([np.cov(g, bias=True) for g in yg])
    assert np.abs(cov_y - np.eye(3)).max() < 5e-3


@pytest.mark.parametrize("method, iters, tol", [("ns", 25, 1e-2), ("mpa", None, 0.6)])
def test_other_inverse_roots(method, iters, tol):
    """NS converges to the whitening with enough iterations; MPA is a coarse [5/5] root."""
    x = _correlated()
    y = DecorrelatedBatchNorm2d(6, method=method, iters=iters).double()(x)
    cov_y = np.cov(_group_matrix(y.detach().numpy(), 1)[0], bias=True)
    assert np.isfinite(cov_y).all()
    assert np.abs(cov_y - np.eye(6)).max() < tol


def test_functional_equals_module():
    x = _correlated()
    m = DecorrelatedBatchNorm2d(6, groups=2, momentum=0.3).double()
    with torch.no_grad():
        m.weight.uniform_()
        m.bias.normal_()
    rm, rc = torch.zeros(6, dtype=torch.float64), torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    ref = zca_whiten(
        x, 2, running_mean=rm, running_cov=rc, weight=m.weight, bias=m.bias, momentum=0.3
    )
    assert torch.equal(m(x), ref)
    assert torch.equal(m.running_mean, rm) and torch.equal(m.running_cov, rc)
    m.eval()
    assert torch.allclose(
        m(x), zca_whiten(x, 2, running_mean=rm, running_cov=rc, weight=m.weight, bias=m.bias,
                         training=False), rtol=0, atol=1e-12,
    )  # fmt: skip


def test_zca_whitening_matrix():
    S = torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64)).expand(3, 2, 2)
    W = zca_whitening_matrix(S, eps=0.0)
    assert torch.allclose(W, torch.diag(torch.tensor([0.5, 1 / 3], dtype=torch.float64)))


# -- running statistics and eval mode -----------------------------------------------------
def test_running_stats_momentum():
    m = DecorrelatedBatchNorm2d(6, groups=2, momentum=0.1).double()
    x = _correlated()
    m(x)
    xg = _group_matrix(x.numpy(), 2)
    mean = xg.mean(-1).reshape(-1)
    cov = np.stack([np.cov(g, bias=True) for g in xg])
    assert np.allclose(m.running_mean.numpy(), 0.1 * mean, rtol=0, atol=1e-12)
    assert np.allclose(m.running_cov.numpy(), 0.9 * np.eye(3) + 0.1 * cov, rtol=0, atol=1e-12)
    assert m.num_batches_tracked.item() == 1


def test_running_stats_cumulative_average():
    m = DecorrelatedBatchNorm1d(4, momentum=None).double()
    batches = [_correlated(n=32, c=4, hw=(), seed=s) for s in range(3)]
    for b in batches:
        m(b)
    means = np.stack([b.numpy().mean(0) for b in batches])
    covs = np.stack([np.cov(b.numpy().T, bias=True) for b in batches])
    assert m.num_batches_tracked.item() == 3
    assert np.allclose(m.running_mean.numpy(), means.mean(0), rtol=0, atol=1e-12)
    assert np.allclose(m.running_cov[0].numpy(), covs.mean(0), rtol=0, atol=1e-12)


def test_eval_uses_running_stats_and_is_batch_independent():
    m = DecorrelatedBatchNorm2d(6, groups=2, eps=1e-3, momentum=0.5).double()
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
    for s in range(3):
        m(_correlated(seed=s))
    m.eval()
    x = _correlated(n=5, seed=10)
    out = m(x)
    ref = _np_reference(
        x.numpy(), m.running_mean.numpy(), m.running_cov.numpy(), 1e-3, 2,
        m.weight.detach().numpy(), m.bias.detach().numpy(),
    )  # fmt: skip
    assert np.abs(out.detach().numpy() - ref).max() < 1e-10
    for i in range(5):
        assert torch.allclose(m(x[i : i + 1]), out[i : i + 1], rtol=0, atol=1e-12)


def test_momentum_one_eval_reproduces_train_output():
    m = DecorrelatedBatchNorm2d(6, groups=3, momentum=1.0).double()
    x = _correlated()
    train_out = m(x)
    assert torch.allclose(m.eval()(x), train_out, rtol=0, atol=1e-10)


def test_whitening_cache_invalidation():
    m = DecorrelatedBatchNorm2d(6, momentum=0.5).double()
    x = _correlated(n=4, seed=3)
    m(_correlated(seed=1))
    m.eval()
    first = m(x)
    assert m._whitening_cache is not None
    assert torch.equal(m(x), first)  # cached matrix, same answer

    m.train()
    m(_correlated(seed=2))  # running stats move
    m.eval()
    second = m(x)
    ref = _np_reference(x.numpy(), m.running_mean.numpy(), m.running_cov.numpy(), 1e-5, 1)
    assert (second - first).abs().max() > 1e-3
    assert np.abs(second.detach().numpy() - ref).max() < 1e-10

    other = DecorrelatedBatchNorm2d(6).double()
    other(_correlated(seed=5))
    m.load_state_dict(other.state_dict())
    assert torch.allclose(m(x), other.eval()(x), rtol=0, atol=1e-12)

    m.reset_running_stats()  # μ = 0, Σ = I: y = x / sqrt(1 + ε)
    assert torch.allclose(m(x), x / (1 + 1e-5) ** 0.5, rtol=0, atol=1e-12)


def test_track_running_stats_false_uses_batch_stats_in_eval():
    m = DecorrelatedBatchNorm2d(6, track_running_stats=False).double().eval()
    assert m.running_mean is None and m.running_cov is None and m.num_batches_tracked is None
    x = _correlated()
    assert torch.equal(m(x), zca_whiten(x))


def test_state_dict_round_trip_and_reset():
    a = DecorrelatedBatchNorm2d(6, groups=2)
    a(_correlated(dtype=torch.float32))
    assert set(a.state_dict()) == {
        "weight", "bias", "running_mean", "running_cov", "num_batches_tracked",
    }  # fmt: skip
    assert a.running_cov.shape == (2, 3, 3)
    b = DecorrelatedBatchNorm2d(6, groups=2)
    b.load_state_dict(a.state_dict())
    x = _correlated(n=3, seed=7, dtype=torch.float32)
    assert torch.equal(a.eval()(x), b.eval()(x))
    a.reset_parameters()
    assert torch.equal(a.running_cov, torch.eye(3).repeat(2, 1, 1))
    assert torch.equal(a.running_mean, torch.zeros(6)) and a.num_batches_tracked.item() == 0
    assert torch.equal(a.weight.data, torch.ones(6)) and torch.equal(a.bias.data, torch.zeros(6))


def test_extra_repr():
    text = repr(DecorrelatedBatchNorm2d(8, groups=4, eps=1e-2, method="ns", iters=7))
    for piece in ("8", "groups=4", "eps=0.01", "momentum=0.1", "method='ns'", "iters=7"):
        assert piece in text


# -- gradients ----------------------------------------------------------------------------
def test_gradcheck_train_mode_eig_exact():
    torch.manual_seed(0)
    m = DecorrelatedBatchNorm2d(4, groups=2, track_running_stats=False).double()
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


def test_gradcheck_eval_mode():
    m = DecorrelatedBatchNorm1d(3).double()
    m(_correlated(n=20, c=3, hw=(), seed=1))
    m.eval()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("method, backward", [("eig", "exact"), ("eig", "pade"), ("ns", "exact"),
                                              ("mpa", "exact")])  # fmt: skip
def test_rank_deficient_batch_is_finite(method, backward):
    """8 channels from 3 samples: Σ has rank <= 2; ε keeps the whitening finite."""
    m = DecorrelatedBatchNorm1d(8, method=method, backward=backward)
    x = torch.randn(3, 8, requires_grad=True)
    y = m(x)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


# -- shapes, dtypes, errors ---------------------------------------------------------------
def test_1d_inputs():
    x2 = _correlated(n=64, c=4, hw=())
    x3 = _correlated(n=8, c=4, hw=(8,))
    for x in (x2, x3):
        y = DecorrelatedBatchNorm1d(4, eps=1e-6).double()(x)
        assert y.shape == x.shape
        cov = np.cov(_group_matrix(y.detach().numpy(), 1)[0], bias=True)
        assert np.abs(cov - np.eye(4)).max() < 1e-3


def test_noncontiguous_batch_of_one_and_empty_eval_batch():
    x = _correlated(n=1, hw=(5, 4)).transpose(2, 3)
    assert not x.is_contiguous()
    m = DecorrelatedBatchNorm2d(6).double()
    assert torch.allclose(m(x), m(x.contiguous()), rtol=0, atol=1e-12)
    assert m.eval()(x[:0]).shape == (0, 6, 4, 5)


def test_autocast_keeps_float32_inside():
    m = DecorrelatedBatchNorm2d(6)
    m.capture_covariance = True
    x = _correlated(dtype=torch.float32).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert m.captured_covariance.dtype == torch.float32
    assert m.running_cov.dtype == torch.float32


def test_capture_covariance():
    m = DecorrelatedBatchNorm2d(6, groups=2, eps=1e-2).double()
    assert m.capture_covariance is False
    x = _correlated()
    m(x)
    assert m.captured_covariance is None
    m.capture_covariance = True
    m(x)
    xg = _group_matrix(x.numpy(), 2)
    ref = np.stack([np.cov(g, bias=True) for g in xg]) + m.eps * np.eye(3)
    assert m.captured_covariance.shape == (2, 3, 3) and not m.captured_covariance.requires_grad
    assert np.allclose(m.captured_covariance.numpy(), ref, rtol=0, atol=1e-12)
    m.eval()(x)  # eval: the running covariance the whitening matrix comes from
    assert torch.allclose(m.captured_covariance, m.running_cov + 1e-2 * torch.eye(3).double())
    assert "captured_covariance" not in m.state_dict()


def test_bad_arguments():
    with pytest.raises(ValueError, match="groups=4 must divide num_features=6"):
        DecorrelatedBatchNorm2d(6, groups=4)
    with pytest.raises(ValueError, match="momentum"):
        DecorrelatedBatchNorm2d(6, momentum=1.5)
    with pytest.raises(ValueError, match="method"):
        DecorrelatedBatchNorm2d(6, method="qr")
    with pytest.raises(ValueError, match="backward"):
        DecorrelatedBatchNorm2d(6, method="mpa", backward="taylor")
    with pytest.raises(TypeError, match="num_features"):
        DecorrelatedBatchNorm2d("6")
    m = DecorrelatedBatchNorm2d(6)
    with pytest.raises(ValueError, match="6 channels"):
        m(torch.randn(4, 5, 3, 3))
    with pytest.raises(ValueError, match="4 dims"):
        m(torch.randn(4, 6, 3))
    with pytest.raises(ValueError, match="2 or 3 dims"):
        DecorrelatedBatchNorm1d(6)(torch.randn(4, 6, 3, 3))
    with pytest.raises(ValueError, match="more than 1 value"):
        m(torch.randn(1, 6, 1, 1))
    with pytest.raises(ValueError, match="together"):
        zca_whiten(torch.randn(4, 6), running_mean=torch.zeros(6))
    with pytest.raises(ValueError, match="running_cov of shape"):
        zca_whiten(torch.randn(4, 6), 2, running_mean=torch.zeros(6),
                   running_cov=torch.eye(6))  # fmt: skip


def test_eval_cache_follows_in_place_changes_of_running_stats_and_settings():
    torch.manual_seed(0)
    dbn = DecorrelatedBatchNorm2d(4, eps=1e-3).double()
    dbn(torch.randn(8, 4, 5, 5, dtype=torch.float64))
    dbn.eval()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    first = dbn(x)
    assert torch.equal(dbn(x), first)  # served from the cache
    with torch.no_grad():
        dbn.running_cov.mul_(4.0)  # in place: the whitening matrix must halve
    torch.testing.assert_close(dbn(x), 0.5 * (first - dbn.bias.view(1, -1, 1, 1))
                               + dbn.bias.view(1, -1, 1, 1), rtol=1e-3, atol=1e-3)
    dbn.method, dbn.iters = "ns", 1  # a coarser root must show up at once
    assert (dbn(x) - first).abs().max() > 1e-3


def test_eval_cache_never_serves_a_swapped_buffer():
    from torch.func import functional_call

    m = DecorrelatedBatchNorm2d(8).eval()
    x = torch.randn(4, 8, 4, 4)
    mean = torch.zeros(8)
    for k in range(1, 21):  # a fresh Σ = k·I each call, often at the freed address
        cov = torch.diag_embed(torch.full((1, 8), float(k)))
        y = functional_call(m, {"running_cov": cov, "running_mean": mean}, (x,))
        torch.testing.assert_close(y, x / (k + 1e-5) ** 0.5, atol=1e-5, rtol=1e-5)
        del cov, y
    # plain assignment of a new buffer tensor too
    m.running_cov = torch.eye(8).unsqueeze(0) * 4.0
    torch.testing.assert_close(m(x), x / (4 + 1e-5) ** 0.5, atol=1e-5, rtol=1e-5)
    # and new storage behind the same tensor object (`.data =` keeps the version counter)
    m.running_cov.data = torch.eye(8).unsqueeze(0) * 9.0
    torch.testing.assert_close(m(x), x / (9 + 1e-5) ** 0.5, atol=1e-5, rtol=1e-5)


def test_eval_under_inference_mode_and_then_with_gradients():
    m = DecorrelatedBatchNorm2d(8)
    for _ in range(3):
        m(torch.randn(16, 8, 4, 4))
    m.eval()
    x = torch.randn(2, 8, 4, 4)
    with torch.inference_mode():
        y_inf = m(x)
    xg = x.clone().requires_grad_()
    y = m(xg)
    y.sum().backward()
    assert xg.grad is not None and torch.allclose(y.detach(), y_inf)
    with torch.inference_mode():  # built and used entirely under inference mode
        m2 = DecorrelatedBatchNorm2d(8).eval()
        assert torch.allclose(m2(x), x / (1 + 1e-5) ** 0.5, atol=1e-6)


def test_channels_last_input_gives_channels_last_output():
    m = DecorrelatedBatchNorm2d(8, groups=2)
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    y = m(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, m(x.contiguous()))
