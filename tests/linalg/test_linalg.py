from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import spd

from orthocond import linalg
from orthocond.linalg import (
    BACKWARDS,
    METHODS,
    cond,
    covariance,
    inv_sqrtm,
    polar,
    polar_express_coefficients,
    sqrtm,
)

ROOTS = [sqrtm, inv_sqrtm]
ALL_VARIANTS = [("eig", b) for b in BACKWARDS] + [("ns", "exact"), ("mpa", "exact")]


def eig_reference(A: torch.Tensor, power: float) -> torch.Tensor:
    lam, U = torch.linalg.eigh(A.double())
    return (U * lam.pow(power).unsqueeze(-2)) @ U.transpose(-2, -1)


def exact_grad(A: torch.Tensor, G: torch.Tensor, power: float) -> torch.Tensor:
    """Daleckii–Krein gradient from a float64 eigendecomposition, divided differences by formula."""
    lam, U = torch.linalg.eigh(A.double())
    f = lam.pow(power)
    li, lj = lam.unsqueeze(-1), lam.unsqueeze(-2)
    diff = li - lj
    same = diff.abs() < 1e-300
    L = torch.where(
        same,
        power * lam.pow(power - 1).unsqueeze(-1).expand_as(diff),
        (f.unsqueeze(-1) - f.unsqueeze(-2)) / torch.where(same, 1.0, diff),
    )
    Gs = 0.5 * (G + G.transpose(-2, -1))
    return U @ (L * (U.transpose(-2, -1) @ Gs.double() @ U)) @ U.transpose(-2, -1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ---------------------------------------------------------------- exact gradients


@pytest.mark.parametrize("fn", ROOTS)
def test_gradcheck_eig_exact(fn):
    A = spd(5, kappa=5.0, batch=(2,)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fn(x, "eig", backward="exact"), (A,))


@pytest.mark.parametrize("fn", ROOTS)
def test_gradcheck_ns_through_iterations(fn):
    A = spd(4, kappa=5.0, batch=(2,)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fn(x, "ns", iters=4), (A,))


def test_gradcheck_polar_svd_full_rank():
    g = torch.Generator().manual_seed(1)
    G = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: polar(x, "svd"), (G,))


def test_gradcheck_covariance():
    X = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(covariance, (X,))


@pytest.mark.parametrize("fn,power", [(sqrtm, 0.5), (inv_sqrtm, -0.5)])
def test_exact_backward_matches_daleckii_krein_formula(fn, power):
    A = spd(12, kappa=100.0, batch=(3,))
    G = torch.randn(3, 12, 12, dtype=torch.float64)
    A.requires_grad_()
    fn(A, "eig").backward(G)
    assert rel(A.grad, exact_grad(A.detach(), G, power)) < 1e-10


# ---------------------------------------------------------------- forward accuracy


@pytest.mark.parametrize("fn,power", [(sqrtm, 0.5), (inv_sqrtm, -0.5)])
def test_eig_forward_matches_scipy(fn, power):
    A = spd(16, kappa=1e3, batch=(3,))
    out = fn(A, "eig")
    ref = torch.stack([torch.from_numpy(np.real(scipy.linalg.sqrtm(a.numpy()))) for a in A])
    if power < 0:
        ref = torch.linalg.inv(ref)
    assert rel(out, ref) < 1e-9


@pytest.mark.parametrize("fn,power", [(sqrtm, 0.5), (inv_sqrtm, -0.5)])
def test_ns_error_falls_with_iterations(fn, power):
    A = spd(16, kappa=10.0)
    ref = eig_reference(A, power)
    errors = [rel(fn(A, "ns", iters=k), ref) for k in (1, 3, 5, 10, 30)]
    assert all(e2 < e1 for e1, e2 in zip(errors[:3], errors[1:4]))
    assert errors[-1] <= 1e-8


@pytest.mark.parametrize("fn,power,tol", [(sqrtm, 0.5, 5e-3), (inv_sqrtm, -0.5, 1.5e-2)])
def test_mpa_forward_tolerance(fn, power, tol):
    # FORMULAS.md §3: n = 16, kappa = 10: MPA 2.1e-3 (root), 6.0e-3 (inverse root).
    A = spd(16, kappa=10.0, batch=(4,))
    assert rel(fn(A, "mpa"), eig_reference(A, power)) < tol


def test_float32_forward_accuracy():
    A = spd(32, kappa=100.0, batch=(2,), dtype=torch.float32)
    assert rel(sqrtm(A, "eig"), eig_reference(A, 0.5)) < 1e-5
    assert rel(inv_sqrtm(A, "eig"), eig_reference(A, -0.5)) < 1e-5


# ---------------------------------------------------------------- approximate backwards


def well_separated(n: int, batch: int = 2) -> torch.Tensor:
    # eigenvalues 2^0 ... 2^{-(n-1)}: every ratio r <= 1/2, where Taylor and Padé are exact
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=torch.float64))
    lam = 2.0 ** -torch.arange(n, dtype=torch.float64)
    return (Q * lam) @ Q.transpose(-2, -1)


@pytest.mark.parametrize("backward,tol", [("svd", 1e-9), ("taylor", 1e-9), ("pade", 1e-9)])
@pytest.mark.parametrize("fn,power", [(sqrtm, 0.5), (inv_sqrtm, -0.5)])
def test_approximate_eig_backwards_match_exact(backward, tol, fn, power):
    A = well_separated(8)
    G = torch.randn(2, 8, 8, dtype=torch.float64)
    A.requires_grad_()
    fn(A, "eig", backward=backward).backward(G)
    assert rel(A.grad, exact_grad(A.detach(), G, power)) < tol


def test_taylor_truncation_is_visible_near_ties():
    # r = 0.99: the degree-100 series has error r^101 = 36 % relative (FORMULAS §2).
    lam = torch.tensor([1.0, 0.99], dtype=torch.float64)
    A = torch.diag(lam).requires_grad_()
    G = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    sqrtm(A, "eig", backward="taylor").backward(G)
    exact = exact_grad(A.detach(), G, 0.5)
    ratio = float(A.grad[0, 1] / exact[0, 1])
    assert ratio == pytest.approx(1 - 0.99**101, rel=1e-6)


@pytest.mark.parametrize("fn,power,tol", [(sqrtm, 0.5, 1e-2), (inv_sqrtm, -0.5, 5e-2)])
def test_mpa_lyapunov_backward_against_exact(fn, power, tol):
    # FORMULAS §3 table, n = 16, kappa = 10: MPA-Lya grad 3.8e-3, inverse 1.8e-2.
    A = spd(16, kappa=10.0, batch=(4,))
    G = torch.randn(4, 16, 16, dtype=torch.float64)
    G = G + G.transpose(-2, -1)
    A.requires_grad_()
    fn(A, "mpa").backward(G)
    assert rel(A.grad, exact_grad(A.detach(), G, power)) < tol


def test_lyapunov_more_iterations_is_more_accurate():
    A = spd(16, kappa=10.0)
    G = torch.randn(16, 16, dtype=torch.float64)
    errs = []
    for it in (4, 8, 16):
        X = A.clone().requires_grad_()
        sqrtm(X, "mpa", iters=it).backward(G)
        # compare with the exact gradient at the (approximate) MPA root: B X + X B = sym(G)
        B = sqrtm(A, "mpa")
        errs.append(float((B @ X.grad + X.grad @ B - 0.5 * (G + G.T)).norm()))
    assert errs[1] < errs[0] and errs[2] < 1e-8


# ---------------------------------------------------------------- edge cases


def edge_cases(dtype):
    n = 8
    g = torch.Generator().manual_seed(5)
    rank_def = covariance(torch.randn(2, n, 4, generator=g, dtype=torch.float64))  # rank 3
    repeated = torch.diag(
        torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    )
    cluster = torch.diag(1.0 + 1e-12 * torch.arange(n, dtype=torch.float64))
    return {
        "identity": torch.eye(n, dtype=torch.float64),
        "repeated": repeated,
        "cluster": cluster,
        "rank_deficient": rank_def,
        "zero": torch.zeros(n, n, dtype=torch.float64),
        "tiny": 1e-8 * spd(n),
        "huge": 1e8 * spd(n),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method,backward", ALL_VARIANTS)
@pytest.mark.parametrize("fn", ROOTS)
def test_edge_cases_finite(dtype, method, backward, fn):
    for name, A in edge_cases(dtype).items():
        X = A.to(dtype).clone().requires_grad_()
        out = fn(X, method, backward=backward)
        assert out.dtype == dtype
        assert torch.isfinite(out).all(), (name, "output")
        out.backward(torch.ones_like(out))
        assert torch.isfinite(X.grad).all(), (name, "grad")


def test_identity_gradient_is_exact_where_eigh_autograd_fails():
    A = torch.eye(4, dtype=torch.float64, requires_grad=True)
    G = torch.randn(4, 4, dtype=torch.float64)
    sqrtm(A, "eig").backward(G)
    # sqrt(I + dA) = I + dA/2: the gradient is sym(G)/2
    assert torch.allclose(A.grad, 0.25 * (G + G.T), atol=1e-14)
    B = torch.eye(4, dtype=torch.float64, requires_grad=True)
    lam, U = torch.linalg.eigh(B)
    ((U * lam.sqrt()) @ U.T).backward(G)
    assert not torch.isfinite(B.grad).all()  # the failure orthocond removes


def test_rank_deficient_root_squares_back():
    X = torch.randn(3, 16, 6, dtype=torch.float64)
    C = covariance(X)
    S = sqrtm(C, "eig")
    assert rel(S @ S, C) < 1e-7


def test_zero_matrix_square_root_is_zero():
    for method in METHODS:
        assert sqrtm(torch.zeros(3, 3), method).abs().max() < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_leading_dims_batch_of_one_and_noncontiguous(method):
    A = spd(6, batch=(2, 3))
    full = sqrtm(A, method)
    assert full.shape == (2, 3, 6, 6)
    one = sqrtm(A[1:2, 2:3], method)
    assert torch.allclose(one, full[1:2, 2:3], atol=1e-12)
    noncontig = A.transpose(0, 1)
    assert not noncontig.is_contiguous()
    assert torch.allclose(sqrtm(noncontig, method), full.transpose(0, 1), atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_scale_equivariance(method):
    A = spd(8)
    for scale in (1e-8, 1e8):
        assert rel(sqrtm(scale * A, method), scale**0.5 * sqrtm(A, method)) < 1e-9


def test_half_and_autocast_compute_in_float32():
    A = spd(8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sqrtm(A, "ns")
    assert out.dtype == torch.float32
    assert rel(out, sqrtm(A, "ns")) < 1e-6
    out_bf16 = inv_sqrtm(A.to(torch.bfloat16), "eig")
    assert out_bf16.dtype == torch.bfloat16
    assert rel(out_bf16, eig_reference(A, -0.5)) < 1e-2


@pytest.mark.parametrize("method", METHODS)
def test_eps_is_added_to_the_diagonal(method):
    A = spd(6)
    assert torch.allclose(
        sqrtm(A, method, eps=0.3), sqrtm(A + 0.3 * torch.eye(6, dtype=A.dtype), method), atol=1e-12
    )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda: sqrtm(torch.randn(3, 4)), ValueError, "square"),
        (lambda: sqrtm(torch.randn(4)), ValueError, "at least 2 dims"),
        (lambda: sqrtm(torch.ones(3, 3, dtype=torch.int64)), TypeError, "floating"),
        (lambda: sqrtm(torch.full((3, 3), float("nan"))), ValueError, "NaN"),
        (lambda: inv_sqrtm(torch.eye(3) * float("inf")), ValueError, "NaN or Inf"),
        (lambda: sqrtm(torch.eye(3), "svd"), ValueError, "method"),
        (lambda: sqrtm(torch.eye(3), "eig", backward="magic"), ValueError, "backward"),
        (lambda: sqrtm(torch.eye(3), "ns", backward="pade"), ValueError, "method='eig'"),
        (lambda: sqrtm(torch.eye(3), eps=-1.0), ValueError, "eps"),
        (lambda: sqrtm(torch.eye(3), "ns", iters=0), ValueError, "iters"),
        (lambda: sqrtm([[1.0]]), TypeError, "torch.Tensor"),
        (lambda: polar(torch.randn(3, 2), "qr"), ValueError, "method"),
        (lambda: polar(torch.randn(3, 2), "ns", rtol=1e-3), ValueError, "rtol"),
        (lambda: polar(torch.randn(3, 2), rtol=2.0), ValueError, "rtol"),
        (lambda: polar(torch.randn(3, 2), "ns", steps=0), ValueError, "steps"),
        (lambda: covariance(torch.randn(5)), ValueError, "X"),
    ],
)
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()


# ---------------------------------------------------------------- polar


def with_singular_values(m, n, sigma, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return ((U * sigma) @ V.T).to(dtype), U @ V.T


@pytest.mark.parametrize("shape", [(64, 27), (27, 64), (256, 512), (96, 96)])
@pytest.mark.parametrize("kappa", [1.0, 1e2, 1e3])
def test_polar_ns_float32_within_1e_3(shape, kappa):
    k = min(shape)
    sigma = torch.logspace(0, -np.log10(kappa), k, dtype=torch.float64) * 3.7
    G, R = with_singular_values(*shape, sigma, dtype=torch.float32)
    assert rel(polar(G, "ns"), R) <= 1e-3
    assert rel(polar(G, "svd"), R) <= 1e-4  # float32 rounding of G alone costs ~2e-5 at kappa 1e3


def test_polar_svd_semi_orthogonal_and_batched():
    G = torch.randn(3, 64, 27, dtype=torch.float64)
    R = polar(G)
    assert torch.allclose(
        R.transpose(-2, -1) @ R, torch.eye(27, dtype=torch.float64).expand(3, 27, 27)
    )
    assert torch.allclose(polar(G[1:2]), R[1:2])


def test_polar_rtol_keeps_only_the_numerical_rank():
    sigma = torch.tensor([5.0, 2.0, 1.0, 1e-13, 0.0, 0.0], dtype=torch.float64)
    G, _ = with_singular_values(8, 6, sigma)
    U, S, Vh = np.linalg.svd(G.numpy(), full_matrices=False)
    expected = U[:, :3] @ Vh[:3]
    assert np.allclose(polar(G, rtol=1e-8).numpy(), expected, atol=1e-12)
    assert torch.linalg.matrix_rank(polar(G, rtol=1e-8)) == 3


def test_polar_ns_zero_stays_zero():
    assert polar(torch.zeros(4, 6), "ns").abs().max() == 0


def test_polar_express_coefficients_equioscillate():
    coefs = polar_express_coefficients(9)
    assert len(coefs) == 9
    a, b, c = coefs[0]
    x = np.geomspace(1e-4, 1.001, 200001)
    err = np.abs(1 - (a * x + b * x**3 + c * x**5))
    assert err[0] == pytest.approx(err.max(), rel=1e-6)  # minimax: the error peaks at the ends
    assert coefs[-1] == pytest.approx((1.875, -1.25, 0.375), abs=5e-3)  # converged: quintic NS


# ---------------------------------------------------------------- cond, covariance


def test_cond_matches_numpy():
    A = spd(10, kappa=1234.0, batch=(3,))
    assert torch.allclose(cond(A), torch.full((3,), 1234.0, dtype=torch.float64), rtol=1e-8)
    assert cond(torch.eye(3)).item() == pytest.approx(1.0)
    assert cond(torch.zeros(3, 3)).item() == float("inf")
    assert cond(A.float()).dtype == torch.float64


def test_covariance_matches_numpy():
    X = torch.randn(2, 5, 30, dtype=torch.float64)
    ref = np.stack([np.cov(x, bias=True) for x in X.numpy()])
    assert np.allclose(covariance(X).numpy(), ref, atol=1e-13)


def test_set_eigh_streams_validates():
    from orthocond.linalg import set_eigh_streams

    with pytest.raises(ValueError, match="count"):
        set_eigh_streams(0)


@pytest.mark.cuda
def test_eig_on_streams_matches_single_stream_cuda():
    from orthocond.linalg import set_eigh_streams

    A = spd(48, kappa=100.0, batch=(40,), dtype=torch.float32).cuda()
    G = torch.randn_like(A)
    outs = []
    for count in (1, 8):
        set_eigh_streams(count)
        X = A.clone().requires_grad_()
        out = sqrtm(X, "eig")
        out.backward(G)
        outs.append((out.detach(), X.grad))
    set_eigh_streams(8)
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


def test_cond_reports_nan_for_non_finite_matrices():
    A = torch.stack([spd(3), torch.full((3, 3), float("nan"), dtype=torch.float64)])
    kappa = cond(A)
    assert math.isfinite(kappa[0].item()) and math.isnan(kappa[1].item())


def test_lyapunov_sign_solves_the_equation():
    from orthocond.linalg import lyapunov_sign

    B = spd(6, kappa=5.0)
    C = torch.randn(6, 6, dtype=torch.float64)
    X = lyapunov_sign(B, C, 30)
    assert torch.allclose(B @ X + X @ B, C, atol=1e-10)


def test_mpa_survives_thread_count_changes():
    # MKL's batched LU breaks after torch.set_num_threads(1) -> n; MPA solves by Cholesky.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _ = torch.randn(32, 32) @ torch.randn(32, 32)
    torch.set_num_threads(threads)
    A = spd(16, kappa=10.0, batch=(4,), dtype=torch.float32)
    assert rel(inv_sqrtm(A, "mpa"), eig_reference(A, -0.5)) < 1.5e-2  # FORMULAS §3: 6.0e-3
    assert rel(sqrtm(A, "mpa"), eig_reference(A, 0.5)) < 5e-3  # 2.1e-3


def test_value_checks_can_be_turned_off_for_sync_free_gpu_loops():
    A = torch.eye(3).clone()
    A[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sqrtm(A, "ns")
    linalg.set_value_checks(False)
    try:
        assert torch.isnan(sqrtm(A, "ns")).any()  # NaN in, NaN out, no read-back
        C = spd(6, 10.0, seed=3)
        for method in ("ns", "eig", "mpa"):
            torch.testing.assert_close(inv_sqrtm(C, method), linalg.inv_sqrtm(C, method))
        with pytest.raises(TypeError, match="enabled must be a bool"):
            linalg.set_value_checks(0)
    finally:
        linalg.set_value_checks(True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        sqrtm(A, "ns")


def test_eig_and_mpa_refuse_double_backward_instead_of_answering_wrongly():
    C = spd(4, 10.0, seed=4, dtype=torch.float64).requires_grad_()
    for method in ("eig", "mpa"):
        (g,) = torch.autograd.grad(sqrtm(C, method).square().sum(), C, create_graph=True)
        with pytest.raises(RuntimeError):
            torch.autograd.grad((g * g).sum(), C)
    # ns is plain autograd: twice differentiable
    (g,) = torch.autograd.grad(sqrtm(C, "ns").square().sum(), C, create_graph=True)
    (h,) = torch.autograd.grad((g * g).sum(), C)
    assert torch.isfinite(h).all()


def test_eig_sqrtm_keeps_the_null_space_of_a_rank_deficient_covariance():
    # 64 channels, 49 positions (rank 48): a GCP-like covariance in float32
    g = torch.Generator().manual_seed(7)
    C = covariance(torch.randn(4, 64, 49, generator=g, dtype=torch.float64))
    lam, U = torch.linalg.eigh(C)
    ref = (U * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ U.transpose(-2, -1)
    out = sqrtm(C.float(), "eig").double()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 5e-4  # measured 4.7e-5 (2.9e-3 when the forward used the floored eigenvalues)
