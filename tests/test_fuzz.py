"""Property-based fuzzing (hypothesis) of orthocond.linalg, the meta-layers and the optimizer
plug-ins over adversarial inputs.

Inputs: rank-deficient covariances (exact zeros rotated by a random orthogonal matrix, so that
eigh sees tiny negative eigenvalues), repeated eigenvalues, clusters of eigenvalues equal to
1e-6..1e-12 relative, condition numbers up to 1e12, the zero matrix, scales 1e-8..1e8, data with
all-zero samples, constant and duplicated channels, fewer samples than channels; float32 and
float64; batch of one; non-contiguous input.

Properties: finite output and finite gradient for finite input everywhere; plus exact ones where
the mathematics gives them (symmetry, S @ S = A, W A W = I, positive homogeneity, directional
derivatives of the exact eigen backward, orthogonality of NOG, eta of OLR in (0, lr]).

CI runs ``ORTHOCOND_FUZZ_EXAMPLES`` (default 25) examples per property; raise it for long runs.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orthocond import linalg

EXAMPLES = int(os.environ.get("ORTHOCOND_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Layers whose one example costs ~0.1 s on CPU (convolutions) get a third of the budget.
FUZZ_HEAVY = settings(FUZZ, max_examples=max(5, EXAMPLES // 3))

DTYPES = (torch.float32, torch.float64)
SPECTRA = ("generic", "rank_deficient", "repeated", "cluster", "ill", "zero", "identity")
ROOT_VARIANTS = [("eig", b) for b in linalg.BACKWARDS] + [("ns", "exact"), ("mpa", "exact")]


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------
def _spectrum(kind: str, n: int, batch: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Eigenvalues (float64, (*batch, n)) of the given kind, largest about 1."""
    shape = (*batch, n)
    if kind == "generic":
        return 10.0 ** (-3.0 * torch.rand(shape, generator=g, dtype=torch.float64))
    if kind == "ill":
        return 10.0 ** (-12.0 * torch.rand(shape, generator=g, dtype=torch.float64))
    if kind == "rank_deficient":
        lam = 10.0 ** (-2.0 * torch.rand(shape, generator=g, dtype=torch.float64))
        rank = int(torch.randint(0, n, (), generator=g))  # 0 <= rank < n
        lam[..., rank:] = 0.0
        return lam
    if kind == "repeated":
        values = torch.tensor([1.0, 0.25], dtype=torch.float64)
        pick = torch.randint(0, 2, shape, generator=g)
        return values[pick]
    if kind == "cluster":
        spread = 10.0 ** -float(torch.randint(6, 13, (), generator=g))
        centre = torch.where(torch.rand(shape, generator=g) < 0.5, 1.0, 0.5).to(torch.float64)
        return centre * (1.0 + spread * torch.randn(shape, generator=g, dtype=torch.float64))
    if kind == "zero":
        return torch.zeros(shape, dtype=torch.float64)
    return torch.ones(shape, dtype=torch.float64)  # identity


def _orthogonal(n: int, batch: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=torch.float64))
    return Q


class Case:
    """A fuzzed symmetric PSD matrix with its known spectrum."""

    def __init__(self, A, lam, kind, scale, dtype):
        self.A, self.lam, self.kind, self.scale, self.dtype = A, lam, kind, scale, dtype

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return (
            f"Case(kind={self.kind}, shape={tuple(self.A.shape)}, dtype={self.dtype}, "
            f"scale={self.scale:g}, contiguous={self.A.is_contiguous()}, lam={self.lam.tolist()})"
        )


@st.composite
def psd_cases(draw, kinds=SPECTRA, max_n: int = 6, dtypes=DTYPES, scales=(-8, 8)) -> Case:
    n = draw(st.integers(1, max_n))
    batch = draw(st.sampled_from([(), (1,), (3,)]))
    dtype = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(kinds))
    scale = 10.0 ** draw(st.integers(*scales))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    lam = _spectrum(kind, n, batch, g) * scale
    if kind == "identity":
        A = torch.diag_embed(lam)
    else:
        Q = _orthogonal(n, batch, g)
        A = (Q * lam.unsqueeze(-2)) @ Q.transpose(-2, -1)
        A = 0.5 * (A + A.transpose(-2, -1))
    A = A.to(dtype)
    if draw(st.booleans()):  # same symmetric values, non-contiguous memory
        A = A.transpose(-2, -1)
    return Case(A, lam, kind, scale, dtype)


DATA_KINDS = ("gaussian", "zero_samples", "constant_channels", "duplicate_channels", "all_zero",
              "few_samples", "all_constant")


@st.composite
def feature_data(draw, max_d: int = 5, dtypes=DTYPES, min_positions: int = 1):
    """(X, kind): X (Tensor[B, d, M]) of features with adversarial structure."""
    B = draw(st.integers(1, 3))
    d = draw(st.integers(1, max_d))
    M = draw(st.integers(max(min_positions, 1), 12))
    dtype = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(DATA_KINDS))
    scale = 10.0 ** draw(st.integers(-8, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    X = torch.randn(B, d, M, generator=g, dtype=torch.float64)
    if kind == "zero_samples":
        X[..., torch.rand(M, generator=g) < 0.5] = 0.0
    elif kind == "constant_channels":
        X[:, torch.rand(d, generator=g) < 0.5, :] = 3.0
    elif kind == "duplicate_channels":
        X[:, -1] = X[:, 0]
    elif kind == "all_zero":
        X.zero_()
    elif kind == "few_samples":
        X = X[..., : max(1, min(M, d - 1))].contiguous()
    elif kind == "all_constant":
        X.fill_(-2.0)
    return (X * scale).to(dtype), kind


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.matrix_norm(a - b).max() / torch.linalg.matrix_norm(b).max().clamp_min(1e-300))


def _check_grad(out: torch.Tensor, leaf: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    (grad,) = torch.autograd.grad(out, leaf, upstream)
    assert grad.dtype == leaf.dtype and grad.shape == leaf.shape
    assert _finite(grad), f"non-finite gradient {grad}"
    return grad


# ---------------------------------------------------------------------------------------------
# linalg
# ---------------------------------------------------------------------------------------------
ROOTS = st.sampled_from([linalg.sqrtm, linalg.inv_sqrtm])


@pytest.mark.parametrize("method,backward", ROOT_VARIANTS)
@FUZZ
@given(fn=ROOTS, case=psd_cases(), eps=st.sampled_from([0.0, 1e-5]), seed=st.integers(0, 2**16))
def test_roots_finite_forward_and_backward(method, backward, fn, case, eps, seed):
    A = case.A.clone().requires_grad_(True)
    out = fn(A, method, backward=backward, eps=eps)
    assert out.dtype == case.dtype and out.shape == case.A.shape
    assert _finite(out), f"non-finite output for {case}"
    # Symmetric output (relative to its size).
    asym = (out - out.transpose(-2, -1)).detach().abs().amax()
    assert float(asym) <= 1e-4 * float(out.detach().abs().amax()) + 1e-30
    _check_grad(out, A, seed)


@FUZZ
@given(fn=ROOTS, data=feature_data(), method_backward=st.sampled_from(ROOT_VARIANTS),
       seed=st.integers(0, 99))
def test_roots_of_data_covariances_finite(fn, data, method_backward, seed):
    """covariance -> root on data with zero samples / constant channels / too few samples."""
    X, _ = data
    X = X.clone().requires_grad_(True)
    method, backward = method_backward
    out = fn(linalg.covariance(X), method, backward=backward)
    assert _finite(out)
    _check_grad(out, X, seed)


@FUZZ
@given(case=psd_cases(kinds=("generic", "rank_deficient", "repeated", "cluster", "ill", "zero", "identity")))
def test_eig_sqrtm_squares_back(case):
    """U Λ^{1/2} U^T squared is A, for every spectrum (the floor is below rounding)."""
    S = linalg.sqrtm(case.A, "eig")
    tol = 1e-5 if case.dtype == torch.float32 else 1e-11
    A64 = case.A.double()
    err = torch.linalg.matrix_norm(S.double() @ S.double() - A64)
    # The documented eigenvalue floor sqrt(tiny) is an absolute error on a zero spectrum.
    floor = case.A.shape[-1] * float(torch.finfo(case.dtype).tiny) ** 0.5
    bound = tol * torch.linalg.matrix_norm(A64) + 2 * floor
    assert bool((err <= bound).all()), (err, bound)
    # PSD output: no negative eigenvalues beyond rounding.
    ev = torch.linalg.eigvalsh(S.double())
    assert bool((ev >= -tol * ev.abs().amax(-1, keepdim=True).clamp_min(1e-300)).all())


@FUZZ
@given(case=psd_cases(kinds=("generic", "repeated", "cluster", "identity"), dtypes=(torch.float64,)))
def test_eig_inv_sqrtm_whitens(case):
    """W A W = I for SPD A with condition number <= 1e3 (repeated and clustered too)."""
    W = linalg.inv_sqrtm(case.A, "eig")
    eye = torch.eye(case.A.shape[-1], dtype=torch.float64)
    assert float((W @ case.A @ W - eye).abs().amax()) < 1e-9


@pytest.mark.parametrize("method", ["eig", "ns", "mpa"])
@FUZZ
@given(
    fn=ROOTS,
    case=psd_cases(kinds=("generic", "rank_deficient", "repeated", "cluster", "identity"), scales=(0, 0)),
    k=st.integers(-13, 13),
)
def test_roots_are_positively_homogeneous(method, fn, case, k):
    """f(c A) = c^{±1/2} f(A) for c = 4^k (1.5e-8 .. 6.7e7): normalisations do not leak."""
    assume(bool((case.lam.amax(-1) > 0).all()))  # the zero matrix only meets absolute floors
    c = 4.0**k
    power = 0.5 if fn is linalg.sqrtm else -0.5
    base = fn(case.A, method)
    scaled = fn(case.A * c, method)
    expect = base.double() * c**power
    tol = 1e-4 if case.dtype == torch.float32 else 1e-9
    if method == "eig" and fn is linalg.inv_sqrtm and case.kind == "rank_deficient":
        # The (near-)zero eigenvalues are floored at max(lambda_max * n * eps64, sqrt(tiny)):
        # homogeneous only while the relative floor wins (sqrt(tiny(float32)) = 1.1e-19).
        assume(float(case.lam.amax()) * min(c, 1.0) * 2.2e-16 > 2e-19)
        tol = 1e-2 if case.dtype == torch.float32 else 1e-6
    assert _rel(scaled, expect) <= tol


@pytest.mark.parametrize("power", [0.5, -0.5])
@FUZZ
@given(case=psd_cases(kinds=("generic", "repeated", "cluster", "identity"), dtypes=(torch.float64,),
                      scales=(-4, 4)),
       seed=st.integers(0, 2**16))
def test_eig_exact_backward_matches_directional_derivative(power, case, seed):
    """<dL/dA, E> = d/dt L(A + tE) by central differences, also at repeated / clustered eigenvalues
    (where the textbook 1/(λi - λj) gradient is undefined)."""
    g = torch.Generator().manual_seed(seed)
    n = case.A.shape[-1]
    E = torch.randn(case.A.shape, generator=g, dtype=torch.float64)
    E = 0.5 * (E + E.transpose(-2, -1))
    E = E / torch.linalg.matrix_norm(E).amax()
    G = torch.randn(case.A.shape, generator=g, dtype=torch.float64)
    fn = linalg.sqrtm if power > 0 else linalg.inv_sqrtm
    A = case.A.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((fn(A, "eig") * G).sum(), A)
    lam_min = float(case.lam.min())
    h = 1e-4 * lam_min
    with torch.no_grad():
        plus = (fn(case.A + h * E, "eig") * G).sum()
        minus = (fn(case.A - h * E, "eig") * G).sum()
    fd = float((plus - minus) / (2 * h))
    an = float((grad * E).sum())
    scale = float(torch.linalg.matrix_norm(G).amax()) * abs(power) * lam_min ** (power - 1) * n
    assert abs(fd - an) <= 1e-5 * scale, (fd, an, scale)


@pytest.mark.parametrize("method", ["svd", "ns"])
@FUZZ
@given(
    m=st.integers(1, 7),
    n=st.integers(1, 7),
    batch=st.sampled_from([(), (1,), (2,)]),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(("generic", "rank_deficient", "repeated", "cluster", "zero")),
    log_scale=st.integers(-8, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_polar_finite_and_semi_orthogonal(method, m, n, batch, dtype, kind, log_scale, seed):
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    s = _spectrum(kind, k, batch, g)
    U = _orthogonal(m, batch, g)[..., :k]
    V = _orthogonal(n, batch, g)[..., :k]
    G = ((U * s.unsqueeze(-2)) @ V.transpose(-2, -1) * 10.0**log_scale).to(dtype)
    R = linalg.polar(G, method)
    assert R.dtype == dtype and R.shape == G.shape and _finite(R)
    if kind in ("generic", "repeated", "cluster") and method == "svd":
        # Full rank: orthonormal columns (tall) or rows (wide), equal to U V^T.
        small = R.transpose(-2, -1) @ R if m >= n else R @ R.transpose(-2, -1)
        eye = torch.eye(k, dtype=torch.float64)
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        assert float((small.double() - eye).abs().amax()) < tol
        assert _rel(R, U @ V.transpose(-2, -1)) < (1e-4 if dtype == torch.float32 else 1e-9)


@FUZZ
@given(case=psd_cases())
def test_cond_is_float64_at_least_one_or_inf(case):
    c = linalg.cond(case.A)
    assert c.dtype == torch.float64 and c.shape == case.A.shape[:-2]
    assert bool(((c >= 1 - 1e-6) | torch.isinf(c)).all())
    assert not bool(torch.isnan(c).any())
    if case.kind in ("generic", "repeated", "identity") and case.dtype == torch.float64:
        expect = case.lam.amax(-1) / case.lam.amin(-1)
        assert bool(torch.allclose(c, expect, rtol=1e-6))


@FUZZ
@given(data=feature_data())
def test_covariance_is_symmetric_psd_and_finite(data):
    X, _ = data
    C = linalg.covariance(X)
    assert C.dtype == X.dtype and _finite(C)
    C64 = C.double()
    assert bool(torch.equal(C, C.transpose(-2, -1))) or _rel(C, C.transpose(-2, -1)) < 1e-6
    ev = torch.linalg.eigvalsh(C64)
    top = ev.abs().amax(-1, keepdim=True)
    assert bool((ev >= -1e-5 * top - 1e-300).all())


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------
nn_mod = pytest.importorskip("orthocond.nn")


def _feature_map(X: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, d, M) -> (B, d, H, W) with H*W = M (H = 1 when M is prime)."""
    B, d, M = X.shape
    h = next(h for h in range(int(math.isqrt(M)), 0, -1) if M % h == 0)
    return X.reshape(B, d, h, M // h)


@FUZZ
@given(
    data=feature_data(min_positions=1),
    method_backward=st.sampled_from(ROOT_VARIANTS),
    vectorize=st.booleans(),
    eps=st.sampled_from([0.0, 1e-5]),
    seed=st.integers(0, 99),
)
def test_global_cov_pool_finite(data, method_backward, vectorize, eps, seed):
    X, _ = data
    x = _feature_map(X).clone().requires_grad_(True)
    method, backward = method_backward
    layer = nn_mod.GlobalCovPool(x.shape[1], None, method=method, backward=backward,
                                 vectorize=vectorize, eps=eps).to(X.dtype)
    out = layer(x)
    assert out.dtype == x.dtype and out.shape[-1] == (layer.out_features if vectorize else layer.dim)
    assert _finite(out)
    _check_grad(out, x, seed)


@FUZZ_HEAVY
@given(data=feature_data(), method=st.sampled_from(["eig", "ns", "mpa"]), seed=st.integers(0, 99))
def test_global_cov_pool_with_reduction_finite(data, method, seed):
    X, _ = data
    torch.manual_seed(seed)
    x = _feature_map(X).clone().requires_grad_(True)
    assume(X.shape[0] * X.shape[2] > 1)  # the reduction's BatchNorm2d needs 2 values per channel
    layer = nn_mod.GlobalCovPool(x.shape[1], 3, method=method).to(X.dtype)
    out = layer(x)
    assert _finite(out)
    _check_grad(out, x, seed)
    out2 = layer(x)
    (gw,) = torch.autograd.grad(out2.sum(), layer.pre_svd.weight)
    assert _finite(gw)


WHITENING_VARIANTS = [("eig", "exact"), ("eig", "svd"), ("eig", "taylor"), ("eig", "pade"),
                      ("ns", "exact"), ("mpa", "exact")]


@FUZZ
@given(
    data=feature_data(max_d=6, min_positions=2),
    groups=st.sampled_from([1, 2, 3]),
    method_backward=st.sampled_from(WHITENING_VARIANTS),
    eps=st.sampled_from([0.0, 1e-5, 1e-2]),
    seed=st.integers(0, 99),
)
def test_decorrelated_batchnorm2d_finite_train_and_eval(data, groups, method_backward, eps, seed):
    X, _ = data
    x = _feature_map(X)
    C = x.shape[1]
    if C % groups:
        groups = 1
    method, backward = method_backward
    layer = nn_mod.DecorrelatedBatchNorm2d(C, groups=groups, eps=eps, method=method,
                                           backward=backward).to(X.dtype)
    if x.shape[0] * x.shape[2] * x.shape[3] < 2:
        return
    xr = x.clone().requires_grad_(True)
    y = layer(xr)
    assert y.shape == x.shape and y.dtype == x.dtype and _finite(y)
    _check_grad(y, xr, seed)
    assert _finite(layer.running_mean) and _finite(layer.running_cov)
    layer.eval()
    with torch.no_grad():
        assert _finite(layer(x))


@FUZZ
@given(data=feature_data(max_d=6, min_positions=2), seed=st.integers(0, 99))
def test_decorrelated_batchnorm_whitens_generic_data(data, seed):
    """Whitened output has covariance I - eps (Σ + eps I)^{-1} ~ I on full-rank data (float64)."""
    X, kind = data
    if kind != "gaussian" or X.dtype != torch.float64 or X.shape[0] * X.shape[2] < 4 * X.shape[1]:
        return
    x = _feature_map(X)
    layer = nn_mod.DecorrelatedBatchNorm2d(x.shape[1], eps=0.0, affine=False).double()
    y = layer(x)
    Y = y.transpose(0, 1).reshape(x.shape[1], -1)
    cov = linalg.covariance(Y)
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    assert float((cov - eye).abs().amax()) < 1e-6


@FUZZ
@given(data=feature_data(max_d=6, min_positions=2), groups=st.sampled_from([1, 2]),
       seed=st.integers(0, 99))
def test_decorrelated_batchnorm1d_finite(data, groups, seed):
    X, _ = data
    B, d, M = X.shape
    if d % groups or B * M < 2:
        return
    layer = nn_mod.DecorrelatedBatchNorm1d(d, groups=groups).to(X.dtype)
    x = X.clone().requires_grad_(True)
    y = layer(x)
    assert _finite(y)
    _check_grad(y, x, seed)


@FUZZ_HEAVY
@given(
    c=st.integers(1, 4),
    hw=st.integers(1, 5),
    log_scale=st.integers(-8, 8),
    dtype=st.sampled_from(DTYPES),
    zero=st.booleans(),
    seed=st.integers(0, 99),
)
def test_skew_orthogonal_conv_finite_and_norm_preserving(c, hw, log_scale, dtype, zero, seed):
    torch.manual_seed(seed)
    layer = nn_mod.SkewOrthogonalConv2d(c, c, 3).to(dtype)
    x = torch.randn(2, c, hw, hw, dtype=dtype) * 10.0**log_scale
    if zero:
        x = torch.zeros_like(x)
    x.requires_grad_(True)
    y = layer(x)
    assert _finite(y)
    _check_grad(y, x, seed)
    if not zero and dtype == torch.float64:
        # exp of a skew conv is orthogonal: the norm is kept up to the series truncation
        ratio = torch.linalg.vector_norm(y.detach().flatten(1), dim=1) / torch.linalg.vector_norm(
            x.detach().flatten(1), dim=1)
        assert bool(((ratio - 1).abs() < 1e-2).all()), ratio


# ---------------------------------------------------------------------------------------------
# optimizer plug-ins
# ---------------------------------------------------------------------------------------------
optim = pytest.importorskip("optim")


@st.composite
def gradients(draw):
    """A conv/linear-shaped gradient with adversarial singular values."""
    shape = draw(st.sampled_from([(4, 3), (3, 5), (4, 2, 3, 3), (1, 6), (6, 1), (2, 2)]))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(("generic", "rank_deficient", "repeated", "cluster", "zero")))
    scale = 10.0 ** draw(st.integers(-8, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    m, n = shape[0], math.prod(shape[1:])
    k = min(m, n)
    s = _spectrum(kind, k, (), g)
    U, V = _orthogonal(m, (), g)[:, :k], _orthogonal(n, (), g)[:, :k]
    G = ((U * s) @ V.T * scale).reshape(shape).to(dtype)
    return G, kind, s


@pytest.mark.parametrize("method", ["svd", "ns"])
@FUZZ
@given(grad=gradients(), scale=st.sampled_from(["none", "grad"]))
def test_nearest_orthogonal_gradient_finite_and_orthogonal(method, grad, scale):
    G, kind, s = grad
    R = optim.nearest_orthogonal_gradient(G, method, scale=scale)
    assert R.shape == G.shape and R.dtype == G.dtype and _finite(R)
    if kind == "zero":
        assert bool((R == 0).all())
        return
    m = G.shape[0]
    Rm = R.reshape(m, -1).double()
    if scale == "grad":
        gn = float(torch.linalg.vector_norm(G.double()))
        assert abs(float(torch.linalg.vector_norm(Rm)) - gn) <= 1e-3 * gn
        Rm = Rm / float(torch.linalg.vector_norm(Rm)) * math.sqrt(min(Rm.shape))
    if kind != "rank_deficient" and method == "svd":
        small = Rm.T @ Rm if Rm.shape[0] >= Rm.shape[1] else Rm @ Rm.T
        tol = 1e-4 if G.dtype == torch.float32 else 1e-9
        assert float((small - torch.eye(small.shape[0], dtype=torch.float64)).abs().amax()) < tol


@FUZZ
@given(grad=gradients(), wscale=st.integers(-8, 8), seed=st.integers(0, 99))
def test_olr_paper_is_finite_or_nan_and_hook_lr_in_range(grad, wscale, seed):
    G, kind, _ = grad
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(G.shape, generator=g, dtype=torch.float64) * 10.0**wscale).to(G.dtype)
    eta = optim.olr_paper([W], [G])
    assert math.isfinite(eta) or (math.isnan(eta) and not bool(G.any()))
    p = torch.nn.Parameter(W.clone())
    opt = torch.optim.SGD([{"params": [p]}], lr=0.1)
    olr = optim.OLR(opt, [p])
    p.grad = G.clone()
    opt.step()
    (used,) = olr.last_lr
    assert math.isfinite(used) and 0.0 < used <= 0.1
    assert opt.param_groups[0]["lr"] == 0.1
    assert _finite(p.detach())
    lr_exact = optim.olr_exact([W], [G], 0.1)
    assert math.isfinite(lr_exact) and 0.0 <= lr_exact <= 0.1


@pytest.mark.parametrize("kind", ["so", "dso", "mc", "srip"])
@FUZZ
@given(grad=gradients())
def test_orthogonality_penalties_finite_with_finite_gradient(kind, grad):
    """Penalties of zero / rank-deficient / 1e-8..1e8-scaled weights: finite value and gradient."""
    ortho = pytest.importorskip("orthocond.ortho")
    W, _, _ = grad  # same adversarial spectra as the gradients above
    W = W.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    value = ortho.orthogonality_penalty([W], kind, **({"generator": g} if kind == "srip" else {}))
    assert value.ndim == 0 and _finite(value) and float(value.detach()) >= 0
    (gw,) = torch.autograd.grad(value, W)
    assert _finite(gw)
    err = ortho.orthogonality_error(W.detach())
    assert _finite(err) and float(err) >= 0


def _cayley_omega_norm1(W: torch.Tensor, G: torch.Tensor) -> float:
    """||Omega||_1 of the first Cayley SGD step (momentum buffer = -G), Li et al. 2020."""
    wide = W.shape[0] <= W.shape[1]
    X, M = (W.T, -G.T) if wide else (W, -G)
    MX = M @ X.T
    What = MX - 0.5 * X @ (X.T @ MX)
    return float((What - What.T).abs().sum(dim=0).amax())


@FUZZ
@given(grad=gradients(), lr=st.sampled_from([1e-3, 0.1, 1.0]))
def test_cayley_sgd_step_keeps_weights_orthonormal(grad, lr):
    """One Cayley SGD step with an adversarial gradient keeps the weight finite and orthonormal
    to 1e-4, for lr * ||Omega||_1 < 0.99 (up to the clip of alpha at 2q = 1). Regression: the
    fixed point used to start from the raw momentum, Y0 = X + alpha*M, instead of the tangent
    one, Y0 = X + alpha*(Omega @ X) (Li et al. 2020, Algorithm 1): one-step error 2e-1 at
    lr * ||Omega||_1 = 0.3 and 1e45 at 0.6."""
    G, _, _ = grad
    m = G.shape[0]
    g = torch.Generator().manual_seed(1)
    W0 = linalg.polar(torch.randn(m, G[0].numel(), generator=g, dtype=torch.float64))
    assume(lr * _cayley_omega_norm1(W0, G.reshape(m, -1).double()) < 0.99)
    p = torch.nn.Parameter(W0.reshape(G.shape).to(G.dtype))
    opt = optim.CayleySGD([p], lr=lr)
    p.grad = G.clone()
    opt.step()
    assert _finite(p.detach())
    W = p.detach().reshape(m, -1).double()
    small = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    eye = torch.eye(small.shape[0], dtype=torch.float64)
    assert float(torch.linalg.matrix_norm(small - eye)) < 1e-4


CAYLEY_CASES = {
    "drift-4x3": [[0.3302, -0.0504, 1.0067], [3.8882, -2.0726, 6.3090],
                  [0.4604, -0.5070, 0.9910], [-0.3163, 0.7030, -1.3302]],
    "nan-2x2": [[2.8363, -1.7047], [-1.4071, 9.6602]],  # 2.7e4, 2.5e38, then NaN in float32
}


@pytest.mark.parametrize("case", sorted(CAYLEY_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cayley_sgd_large_step_drift(dtype, case):
    """Falsifying examples of the Cayley fuzzing (lr = 1, alpha clipped), kept as regressions."""
    G = torch.tensor(CAYLEY_CASES[case], dtype=dtype)
    m, n = G.shape
    g = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(linalg.polar(torch.randn(m, n, generator=g, dtype=torch.float64)).to(dtype))
    opt = optim.CayleySGD([p], lr=1.0, momentum=0.0)
    for _ in range(3):
        p.grad = G.clone()
        opt.step()
    W = p.detach().double()
    small = W.T @ W if m >= n else W @ W.T
    err = torch.linalg.matrix_norm(small - torch.eye(small.shape[0], dtype=torch.float64))
    assert float(err) < 1e-2  # with Y0 = X + alpha * (Omega @ X): 8.5e-4 (2x2), 1e-5 (4x3)
