"""float32 meta-layers against a float64 ground truth computed from the same float32 input.

The float32 gradient must be within 2× the error of the best float32-input computation
(for GCP: the float64 gradient rounded to float32; for ZCA: a float64 root of the float32
covariance, i.e. all the error a float32 covariance forces) — the layers may not add error
of their own. Sizes are the issue's cases, shrunk to keep the suite fast; the full-size
numbers are in ``orthocond bench``.
"""

from __future__ import annotations

import pytest
import torch

from orthocond import linalg
from orthocond.nn import DecorrelatedBatchNorm2d, GlobalCovPool, global_cov_pool, zca_whiten


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm())


def _input_grad(fn, x: torch.Tensor) -> torch.Tensor:
    """∂/∂x of <fn(x), R> with R fixed in float64 (the same upstream for every dtype)."""
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    R = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (y * R.to(y.dtype)).sum().backward()
    return x.grad


@pytest.mark.parametrize("backward", ["exact", "pade"])
def test_gcp_eig_float32_gradient_with_more_channels_than_positions(backward):
    # 64 channels, 49 positions: the covariance has rank <= 48 (the iSQRT shape, shrunk)
    x = torch.relu(torch.randn(4, 64, 7, 7, generator=torch.Generator().manual_seed(0)))

    def head(t):
        return global_cov_pool(t, "eig", None, backward=backward)

    g64 = _input_grad(head, x.double())
    g32 = _input_grad(head, x)
    rounding = _relative(g64.float(), g64)  # ~2.5e-8
    err = _relative(g32, g64)  # 3.6e-8; 7.8e-3 with the covariance formed in float32
    assert g32.dtype == torch.float32
    assert err <= 2 * rounding, (err, rounding)


def test_gcp_module_eig_matches_functional_and_captures_float32_covariance():
    x = torch.relu(torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(0)))
    head = GlobalCovPool(16, None, method="eig", eps=1e-3)
    head.capture_covariance = True
    out = head(x)
    torch.testing.assert_close(out, global_cov_pool(x, "eig", None, eps=1e-3))
    assert out.dtype == torch.float32 and head.captured_covariance.dtype == torch.float32


def _stem_features(n: int = 16) -> torch.Tensor:
    """64-channel output of a 3×3 conv on 3 input channels: rank 27, as a ResNet stem."""
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 64, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.2)
        return conv(torch.randn(n, 3, 10, 10, generator=gen))


def _zca_float32_covariance_float64_root(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain-torch ZCA whose only float32 step is the covariance: float64 eigh root, float64 rest."""
    C = x.shape[1]
    X = x.transpose(0, 1).reshape(C, -1)
    X32 = X.float()
    Xc32 = X32 - X32.mean(1, keepdim=True)
    cov = (Xc32 @ Xc32.T / X.shape[1]).double() + eps * torch.eye(C, dtype=torch.float64)
    lam, U = torch.linalg.eigh(cov)
    W = (U * lam.rsqrt()) @ U.T
    X64 = X.double()
    Y = W @ (X64 - X64.mean(1, keepdim=True))
    return Y.reshape(C, x.shape[0], *x.shape[2:]).transpose(0, 1)


@pytest.mark.parametrize("layer", ["functional", "module"])
def test_zca_eig_float32_small_eps_gradient(layer):
    eps = 1e-5  # below λ_max·n·ε_float32 of this covariance (the old floor raised 37 eigenvalues)
    x = _stem_features()
    if layer == "functional":
        def zca(t):
            return zca_whiten(t, eps=eps)
    else:
        def zca(t):
            return DecorrelatedBatchNorm2d(64, eps=eps, affine=False).to(t.dtype)(t)
    g64 = _input_grad(zca, x.double())
    g32 = _input_grad(zca, x)
    reference = _relative(_input_grad(lambda t: _zca_float32_covariance_float64_root(t, eps), x), g64)
    err = _relative(g32, g64)  # 1.1e-3 (reference 1.7e-3); 0.19 with the float32 floor
    assert err <= 2 * reference, (err, reference)
    y32 = zca(x).detach()
    assert _relative(y32, zca(x.double()).detach()) < 1e-4


def test_eig_inverse_root_honours_eps_below_float32_resolution():
    x = _stem_features().transpose(0, 1).reshape(64, -1)
    cov = linalg.covariance(x)  # float32, rank 27
    eps = 1e-5
    W = linalg.inv_sqrtm(cov, "eig", eps=eps)
    lam = torch.linalg.eigvalsh(cov.double())
    floor32 = float(lam[-1]) * 64 * torch.finfo(torch.float32).eps
    assert floor32 > 2 * eps  # the case: eps sits below the float32 resolution of λ_max
    # the null space is whitened by eps^{-1/2}, as asked, not by floor32^{-1/2}
    top = float(torch.linalg.eigvalsh(W.double())[-1])
    assert top == pytest.approx(eps ** -0.5, rel=2e-2)
