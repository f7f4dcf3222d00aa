"""GlobalCovPool, triu vectorisation and the meta-layer capture interface."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from orthocond import linalg
from orthocond.nn import (
    META_LAYERS,
    DecorrelatedBatchNorm1d,
    DecorrelatedBatchNorm2d,
    GlobalCovPool,
    SkewOrthogonalConv2d,
    global_cov_pool,
    pooled_covariance,
    triu_vectorize,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
EIG_BACKWARDS = ("exact", "svd", "taylor", "pade")
ALL_ROOTS = [("eig", b) for b in EIG_BACKWARDS] + [("ns", "exact"), ("mpa", "exact")]


def _np_cov(x: np.ndarray) -> np.ndarray:
    """Biased per-sample channel covariance of (B, C, H, W) by numpy, float64."""
    return np.stack([np.cov(s.reshape(s.shape[0], -1), bias=True) for s in x])


# -- vectorisation ------------------------------------------------------------------------
def test_triu_vectorize_golden_order():
    A = torch.arange(9.0).reshape(3, 3)
    assert triu_vectorize(A).tolist() == [0.0, 1.0, 2.0, 4.0, 5.0, 8.0]


def test_triu_vectorize_index_formula_batched():
    d = 5
    A = torch.randn(2, 3, d, d)
    v = triu_vectorize(A)
    assert v.shape == (2, 3, d * (d + 1) // 2)
    for i in range(d):
        for j in range(i, d):
            k = i * d - i * (i - 1) // 2 + (j - i)
            assert torch.equal(v[..., k], A[..., i, j])


def test_triu_vectorize_bad_input():
    with pytest.raises(ValueError, match="d, d"):
        triu_vectorize(torch.zeros(3, 4))
    with pytest.raises(TypeError):
        triu_vectorize([[1.0]])


# -- forward accuracy ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_gcp_eig_matches_scipy_sqrtm(dtype, tol):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 3, 4, dtype=torch.float64)  # M = 12 > d = 5: full rank
    gcp = GlobalCovPool(5, None, method="eig", vectorize=False)
    out = gcp(x.to(dtype))
    assert out.dtype == dtype and out.shape == (3, 5, 5)
    ref = np.stack([scipy.linalg.sqrtm(c).real for c in _np_cov(x.numpy())])
    err = np.abs(out.double().numpy() - ref).max() / np.abs(ref).max()
    assert err < tol
    vec = GlobalCovPool(5, None, method="eig")(x.to(dtype))
    assert torch.equal(vec, triu_vectorize(out))
    assert gcp.out_features == 25 and GlobalCovPool(5, None).out_features == 15


def test_gcp_ns_iterations_reach_eig_root():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    exact = GlobalCovPool(4, None, method="eig")(x)
    err = {k: (GlobalCovPool(4, None, method="ns", iters=k)(x) - exact).abs().max().item()
           for k in (1, 30)}  # fmt: skip
    assert err[1] > 1e-3  # one Newton–Schulz step is a coarse root ...
    assert err[30] < 1e-9  # ... and iters is forwarded: 30 steps converge
    cov = pooled_covariance(x)
    assert torch.allclose(
        GlobalCovPool(4, None, method="ns", iters=3)(x),
        triu_vectorize(linalg.sqrtm(cov, "ns", iters=3)),
        rtol=0, atol=1e-14,
    )
    mpa = GlobalCovPool(4, None, method="mpa")(x)
    assert torch.allclose(mpa, triu_vectorize(linalg.sqrtm(cov, "mpa")), rtol=0, atol=1e-14)


def test_gcp_eig_backwards_agree_on_separated_spectrum():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = torch.randn(2, 10, dtype=torch.float64)
    outs, grads = [], []
    for backward in EIG_BACKWARDS:
        xi = x.clone().requires_grad_()
        out = GlobalCovPool(4, None, method="eig", backward=backward)(xi)
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append(xi.grad)
    # eigenvalue ratios reach r = 0.89 here: the degree-100 Taylor K is off by r^101 ~ 1e-5
    tolerance = {"svd": 1e-12, "taylor": 1e-4, "pade": 1e-12}
    for backward, out, grad in zip(EIG_BACKWARDS[1:], outs[1:], grads[1:]):
        assert torch.equal(out, outs[0])
        err = ((grad - grads[0]).abs().max() / grads[0].abs().max()).item()
        assert err < tolerance[backward], (backward, err)


def test_gcp_eps_added_to_diagonal():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = GlobalCovPool(3, None, method="eig", eps=0.5, vectorize=False)(x)
    ref = linalg.sqrtm(pooled_covariance(x) + 0.5 * torch.eye(3, dtype=x.dtype), "eig")
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)


def test_global_cov_pool_functional_equals_module_without_reduction():
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(global_cov_pool(x, "ns", 5), GlobalCovPool(6, None)(x))


# -- gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["eig", "ns"])
def test_gcp_gradcheck_float64(method):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    gcp = GlobalCovPool(3, None, method=method, iters=4)
    assert torch.autograd.gradcheck(gcp, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("method, backward", ALL_ROOTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gcp_rank_deficient_finite(method, backward, dtype):
    """M = 4 positions < d = 8 channels (rank <= 3), plus an all-zero input."""
    torch.manual_seed(4)
    gcp = GlobalCovPool(16, 8, method=method, backward=backward).to(dtype)
    for x in (torch.randn(2, 16, 2, 2, dtype=dtype), torch.zeros(2, 16, 2, 2, dtype=dtype)):
        x.requires_grad_()
        out = gcp(x)
        assert out.shape == (2, 36) and torch.isfinite(out).all()
        (out * torch.randn_like(out)).sum().backward()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in gcp.parameters())
        gcp.zero_grad()


# -- Pre-SVD layer, attributes, state -----------------------------------------------------
def test_gcp_pre_svd_layer():
    gcp = GlobalCovPool(32, 8)
    assert isinstance(gcp.pre_svd, nn.Conv2d) and gcp.pre_svd.is_pre_svd is True
    assert gcp.pre_svd.kernel_size == (1, 1) and gcp.pre_svd.bias is None
    assert gcp.pre_svd.out_channels == 8 and gcp.dim == 8 and gcp.out_features == 36
    assert isinstance(gcp.bn, nn.BatchNorm2d)
    none = GlobalCovPool(32, None)
    assert none.pre_svd is None and none.out_features == 32 * 33 // 2
    # forward = root of the covariance of ReLU(BN(conv(x)))
    x = torch.randn(2, 32, 3, 3, dtype=torch.float64)
    gcp = gcp.double()
    feats = torch.relu(gcp.bn(gcp.pre_svd(x)))
    ref = triu_vectorize(linalg.sqrtm(pooled_covariance(feats), "ns", iters=5))
    assert torch.allclose(gcp(x), ref, rtol=0, atol=1e-12)


def test_gcp_state_dict_round_trip():
    a, b = GlobalCovPool(8, 4), GlobalCovPool(8, 4)
    a.train()(torch.randn(4, 8, 3, 3))  # move BN running stats
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {
        "pre_svd.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
        "bn.num_batches_tracked",
    }  # fmt: skip
    x = torch.randn(2, 8, 3, 3)
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("device", DEVICES)
def test_gcp_noncontiguous_and_batch_of_one(device):
    x = torch.randn(3, 4, 5, 3, device=device).transpose(2, 3)
    assert not x.is_contiguous()
    gcp = GlobalCovPool(4, None, method="eig")
    assert torch.allclose(gcp(x), gcp(x.contiguous()), rtol=0, atol=1e-6)
    assert torch.allclose(gcp(x[1:2]), gcp(x)[1:2], rtol=0, atol=1e-6)


def test_gcp_autocast_computes_in_float32():
    torch.manual_seed(5)
    gcp = GlobalCovPool(8, 4, method="ns").eval()
    gcp.capture_covariance = True
    x = torch.randn(2, 8, 5, 5)
    ref = gcp(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gcp(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert gcp.captured_covariance.dtype == torch.float32
    # only the 1x1 conv ran in bfloat16 (8-bit mantissa)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_gcp_bad_arguments():
    gcp = GlobalCovPool(4, 2)
    with pytest.raises(ValueError, match="4 channels"):
        gcp(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="4 dims"):
        gcp(torch.randn(2, 4, 16))
    with pytest.raises(TypeError, match="floating"):
        gcp(torch.ones(2, 4, 3, 3, dtype=torch.long))
    with pytest.raises(TypeError):
        gcp("x")
    with pytest.raises(ValueError, match="method"):
        GlobalCovPool(4, 2, method="svd")
    with pytest.raises(ValueError, match="backward"):
        GlobalCovPool(4, 2, method="ns", backward="pade")
    with pytest.raises(ValueError, match="backward"):
        GlobalCovPool(4, 2, method="eig", backward="newton")
    with pytest.raises(ValueError, match="reduced_channels"):
        GlobalCovPool(4, 0)
    with pytest.raises(TypeError, match="in_channels"):
        GlobalCovPool(4.0, 2)
    with pytest.raises(ValueError, match="iters"):
        GlobalCovPool(4, 2, iters=0)
    with pytest.raises(ValueError, match="eps"):
        GlobalCovPool(4, 2, eps=-1.0)


# -- the diagnostics interface ------------------------------------------------------------
def test_meta_layers_tuple():
    assert META_LAYERS == (GlobalCovPool, DecorrelatedBatchNorm2d, DecorrelatedBatchNorm1d)


def test_gcp_capture_covariance():
    gcp = GlobalCovPool(6, 3, eps=1e-3).double()
    assert gcp.capture_covariance is False and gcp.captured_covariance is None
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    gcp(x)
    assert gcp.captured_covariance is None  # nothing stored unless asked
    gcp.capture_covariance = True
    gcp(x)
    cov = gcp.captured_covariance
    assert cov.shape == (2, 3, 3) and not cov.requires_grad
    feats = torch.relu(gcp.bn(gcp.pre_svd(x))).detach().numpy()
    ref = _np_cov(feats) + 1e-3 * np.eye(3)
    assert np.allclose(cov.numpy(), ref, rtol=0, atol=1e-12)
    assert "capture_covariance" not in str(gcp.state_dict().keys())


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: DecorrelatedBatchNorm2d(8, groups=2, **kw),
        lambda **kw: GlobalCovPool(16, 8, **kw),
        lambda **kw: SkewOrthogonalConv2d(4, 4, 3, **kw),
    ],
)
def test_factory_kwargs_like_torch_nn(make):
    m = make(dtype=torch.float64, device="cpu")
    floats = [t for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float64 for t in floats)
    meta = make(device="meta")
    assert all(t.is_meta for t in list(meta.parameters()) + list(meta.buffers()))
