"""Matrix square root and inverse square root by eigendecomposition.

Forward: ``A + εI = U diag(λ) U^T`` by ``torch.linalg.eigh`` of A in float64,
``f(A + εI) = U diag(f(λ)) U^T`` with ``f(λ) = λ^p``, ``p = ±1/2``. The regulariser ε (the
``eps`` of :func:`~orthocond.linalg.sqrtm`) joins in float64 in the eigenvalue domain,
``λ = |λ(A)| + ε`` (|λ| for noise-sized negative eigenvalues of the PSD A, 0 for clearly
negative ones; see ``_eigh64``): a float32 A is known only to about λ_max·n·ε_float32, and adding
ε to its diagonal in float32 (or flooring at that resolution) would replace a small ε by
float32 noise (ZCA of a rank-27 stem at ε = 1e-5: 37 eigenvalues raised 5×, the input
gradient 20-50 % off a float64 computation). Eigenvalues are then floored at

    λ_floor = max(λ_max · n · ε_res, sqrt(tiny(dtype)))

with ``ε_res`` the float64 epsilon when ε > 0 (float64 resolution is all the floor must
guard) and the epsilon of the *input* dtype when ε = 0 (float32 input: eigenvalues below
λ_max·n·1.2e-7 are then rounding noise of the matrix itself), so rank-deficient covariances
(the normal case in GCP: 256 channels, 196 positions) and the zero matrix give finite outputs
and gradients. The floor serves the inverse root and the backward; the square root's forward
is ``U diag(sqrt(max(λ, 0))) U^T`` of the unfloored eigenvalues, which keeps a null space at 0.

Backward (``backward=``):

* ``"exact"``: Daleckii–Krein, ``∂l/∂A = U [L ∘ (U^T sym(Ḡ) U)] U^T`` with the divided
  differences ``L_ij = (f(λi) - f(λj)) / (λi - λj)``, ``L_ii = f'(λi)``. For the square root
  ``L_ij = 1 / (√λi + √λj)``, for the inverse root ``L_ij = -1 / (√λi √λj (√λi + √λj))``:
  closed forms that stay finite at repeated eigenvalues.
* ``"svd"``: the textbook eigenvector gradient, ``L_ij = (f(λi) - f(λj)) K_ij`` with
  ``K_ij = 1 / (λi - λj)``, guarded by ``K_ij = 0`` where ``|λi - λj| <= λ_max · n · ε_float64``.
  Near-ties blow up: this is the unstable baseline the papers compare against.
* ``"taylor"``: ``K_ij`` replaced by its degree-``D`` Taylor series in ``r = λ_< / λ_>``,
  ``K_ij = s_ij / λ_> Σ_{k<=D} r^k = (1 - r^{D+1}) / (λi - λj)`` (``D = 100``, ICCV 2021),
  bounded by ``(D + 1) / λ_>``.
* ``"pade"``: the SVD-Padé layer of ICCV 2021, ``K_ij = s_ij / λ_> · P(r) / Q(r)``, a diagonal
  [50/50] Padé approximant of the degree-100 Taylor series of ``1 / (1 - r)``. Padé approximants
  are unique and ``1 / (1 - r)`` is rational, so the approximant reduces to ``1 / (1 - r)``; it is
  evaluated as ``P(r) = Σ_{m<50} r^m``, ``Q(r) = 1 - r^{50}`` and equals the exact ``K`` to
  ~1e-12 except within ~1e-12 of a tie, where non-finite entries are replaced as in the
  reference layer (``+∞ → max``, ``-∞ → min``, ``NaN → 0``).

The diagonal of every variant is the exact ``f'(λi)``; all variants agree with
``"exact"`` on well-separated spectra.

One more variant exists to *measure* failures, never to train with (:data:`UNSAFE_BACKWARDS`):

* ``"svd-unguarded"``: the textbook gradient as published layers get it from autograd
  through ``eigh``, in the dtype of the incoming gradient: ``∂l/∂U = 2 Ḡ U f(Λ)``,
  ``∂l/∂Λ = diag(Uᵀ Ḡ U) f'(Λ)``, ``∂l/∂A = sym(U [Kᵀ ∘ (Uᵀ ∂l/∂U) + ∂l/∂Λ] Uᵀ)`` with
  ``K_ij = 1 / (λi - λj)`` and no guard. The two huge terms of a near-tie cancel only in
  exact arithmetic, and a tie (the floored null eigenvalues of a rank-deficient covariance
  without ε, a repeated eigenvalue) gives ``1/0``: the gradient turns Inf/NaN. It breaks the
  "finite for finite input" rule on purpose; ``orthocond compare --preset failures`` counts
  the runs it kills (none since ε joins in float64 and no longer ties the ε-eigenvalues).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._utils import check_int, is_compiling, safe_floor, sym

BACKWARDS = ("exact", "svd", "taylor", "pade")
UNSAFE_BACKWARDS = ("svd-unguarded",)
ALL_BACKWARDS = BACKWARDS + UNSAFE_BACKWARDS
_EPS64 = float(torch.finfo(torch.float64).eps)


# cuSOLVER's batched Jacobi covers n <= 32; above that torch.linalg.eigh runs one matrix
# after another with host synchronisation, so independent chunks on several CUDA streams,
# driven from several host threads, overlap (B=128, n=256 on an H100: 659 -> 112 ms f32).
_EIGH_STREAMS = {"count": 8, "min_n": 33, "min_batch": 16}
_STREAM_POOL: dict[tuple[int, int], list] = {}


def set_eigh_streams(count: int) -> None:
    """Number of CUDA streams ``eig`` splits a large batch over (1 disables the split)."""
    check_int(count, "count")
    _EIGH_STREAMS["count"] = count


def _eigh_batched(A: Tensor) -> tuple[Tensor, Tensor]:
    """torch.linalg.eigh over (..., n, n), split over CUDA streams where that pays."""
    count = _EIGH_STREAMS["count"]
    flat = A.reshape(-1, *A.shape[-2:])
    if (
        not A.is_cuda
        or count < 2
        or A.shape[-1] < _EIGH_STREAMS["min_n"]
        or flat.shape[0] < _EIGH_STREAMS["min_batch"]
        or torch.cuda.is_current_stream_capturing()
    ):
        return torch.linalg.eigh(A)
    return _eigh_on_streams(flat, count, A.shape)


def _eigh_on_streams(flat: Tensor, count: int, shape: torch.Size) -> tuple[Tensor, Tensor]:
    from concurrent.futures import ThreadPoolExecutor

    parts = flat.chunk(count)
    device = flat.device
    key = (device.index or 0, len(parts))
    if key not in _STREAM_POOL:
        _STREAM_POOL[key] = [torch.cuda.Stream(device) for _ in parts]
    streams = _STREAM_POOL[key]
    main = torch.cuda.current_stream(device)
    results: list = [None] * len(parts)

    def work(i: int) -> None:
        with torch.cuda.device(device):
            streams[i].wait_stream(main)
            with torch.cuda.stream(streams[i]):
                results[i] = torch.linalg.eigh(parts[i])

    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        list(pool.map(work, range(len(parts))))
    for stream, (evals, evecs) in zip(streams, results):
        main.wait_stream(stream)
        evals.record_stream(main)
        evecs.record_stream(main)
    evals = torch.cat([r[0] for r in results]).reshape(shape[:-1])
    evecs = torch.cat([r[1] for r in results]).reshape(shape)
    return evals, evecs


def _eigh64(A: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenvalues of sym(A) + εI in float64: (floored values, vectors, unfloored values).

    ``eps > 0``: ε is added in float64 to the eigenvalues of A, so the user's ε is honoured
    exactly however small it is against A's own resolution; the floor then only guards
    float64 resolution. A is PSD: an eigenvalue within A's rounding noise below 0
    (``λ >= -λ_max·n·ε(dtype)``) counts by its magnitude ``|λ|``, a clearly negative one (an
    indefinite A) as 0. Taking ``|λ|`` rather than 0 keeps noise eigenvalues distinct, as they
    are in the matrix: clamping would tie them all exactly at ε, a degeneracy the data does
    not have (the exact backward is indifferent; the unguarded textbook one would turn 1/0).
    ``eps == 0``: floored at λ_max·n·ε of A's dtype, the rounding noise of A itself.
    """
    A64 = sym(A.to(torch.float64))
    evals, evecs = _eigh_batched(A64)
    n = A.shape[-1]
    noise = evals[..., -1:].clamp_min(0.0) * (n * float(torch.finfo(A.dtype).eps))
    if eps > 0:
        evals = torch.where(evals >= -noise, evals.abs(), 0.0) + eps
        lam_max = evals[..., -1:]
        floor = torch.clamp(lam_max * (n * _EPS64), min=safe_floor(A.dtype))
    else:
        floor = torch.clamp(noise, min=safe_floor(A.dtype))
    return torch.maximum(evals, floor), evecs, evals


def _divided_difference(
    lam: Tensor, fval: Tensor, power: float, backward: str, degree: int
) -> Tensor:
    """The matrix L of the backward formula, (..., n, n), float64."""
    root = lam.sqrt()
    ri, rj = root.unsqueeze(-1), root.unsqueeze(-2)
    if power == 0.5:
        exact = 1.0 / (ri + rj)
    else:
        exact = -1.0 / (ri * rj * (ri + rj))
    if backward == "exact":
        return exact

    li, lj = lam.unsqueeze(-1), lam.unsqueeze(-2)
    fi, fj = fval.unsqueeze(-1), fval.unsqueeze(-2)
    diag = torch.diag_embed(power * fval / lam)
    off = ~torch.eye(lam.shape[-1], dtype=torch.bool, device=lam.device)
    diff = li - lj
    if backward == "svd":
        tol = lam[..., -1:].unsqueeze(-1) * (lam.shape[-1] * _EPS64)
        K = torch.where(diff.abs() > tol, 1.0 / torch.where(diff == 0, 1.0, diff), 0.0)
        L = (fi - fj) * K
    else:
        big = torch.maximum(li, lj)
        r = torch.minimum(li, lj) / big
        sign = torch.sign(diff)
        if backward == "taylor":
            series = -torch.expm1((degree + 1) * torch.log(r))  # 1 - r^{D+1}, accurate near r = 1
            K = sign * series / torch.where(diff == 0, 1.0, diff.abs())
        else:  # pade
            ratio = _pade_geometric(r)
            K = torch.nan_to_num(sign * ratio / big)
        L = torch.nan_to_num((fi - fj) * K)
    return torch.where(off, L, diag)


# Elements per Horner block: the 49 passes of one block stay in the CPU cache (one pass per
# step over a (32, 256, 256) float64 batch made the Padé backward 2.4x slower than "exact").
_HORNER_BLOCK = 1 << 15


def _pade_geometric(r: Tensor) -> Tensor:
    """P(r)/Q(r) of the [50/50] approximant of 1/(1 - r), by Horner in float64."""
    if r.is_cuda or is_compiling() or r.numel() <= _HORNER_BLOCK:
        return _pade_horner(r)
    flat = r.reshape(-1)
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), _HORNER_BLOCK):
        block = slice(start, start + _HORNER_BLOCK)
        out[block] = _pade_horner(flat[block])
    return out.reshape(r.shape)


def _pade_horner(r: Tensor) -> Tensor:
    p = torch.ones_like(r)
    for _ in range(49):
        p = torch.addcmul(p.new_ones(()), r, p)  # 1 + r p, one pass
    # Q(r) = 1 - r^50 vanishes at r = 1: exact ties become infinite, then nan_to_num.
    return p / (1.0 - r.pow(50))


def _textbook_grad(lam: Tensor, U: Tensor, fval: Tensor, power: float, G: Tensor) -> Tensor:
    """The split two-term eigenvector gradient, unguarded, in ``G.dtype`` (see module doc)."""
    lam, U, fval = lam.to(G.dtype), U.to(G.dtype), fval.to(G.dtype)
    Ut = U.transpose(-2, -1)
    grad_U = (G + G.transpose(-2, -1)) @ (U * fval.unsqueeze(-2))
    grad_lam = torch.diagonal(Ut @ G @ U, dim1=-2, dim2=-1) * (power * fval / lam)
    off = ~torch.eye(lam.shape[-1], dtype=torch.bool, device=lam.device)
    K = torch.where(off, 1.0 / (lam.unsqueeze(-1) - lam.unsqueeze(-2)), 0.0)
    inner = K.transpose(-2, -1) * (Ut @ grad_U) + torch.diag_embed(grad_lam)
    return sym(U @ inner @ Ut)


class _EigPower(torch.autograd.Function):
    """f(A) = A^power (power = ±1/2) via eigh, with a selectable backward."""

    @staticmethod
    def forward(ctx, A: Tensor, power: float, backward: str, degree: int, eps: float) -> Tensor:  # type: ignore[override]
        lam, U, raw = _eigh64(A, eps)
        fval = lam.pow(power)
        # The square root needs no floor: sqrt(max(λ, 0)) keeps the null space of a
        # rank-deficient covariance at 0 instead of lifting it to sqrt(floor) (20x more
        # accurate on a GCP covariance of 196 positions in 256 channels). The inverse root
        # and every backward use the floored values.
        froot = raw.clamp_min(0.0).sqrt() if power == 0.5 else fval
        out = (U * froot.unsqueeze(-2)) @ U.transpose(-2, -1)
        ctx.save_for_backward(lam, U, fval)
        ctx.power, ctx.backward, ctx.degree = power, backward, degree
        return out.to(A.dtype)

    @staticmethod
    @once_differentiable  # the formula is not differentiable again: fail, never answer wrongly
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        lam, U, fval = ctx.saved_tensors
        if ctx.backward == "svd-unguarded":
            return _textbook_grad(lam, U, fval, ctx.power, grad_out), None, None, None, None
        L = _divided_difference(lam, fval, ctx.power, ctx.backward, ctx.degree)
        G = sym(grad_out.to(torch.float64))
        Ut = U.transpose(-2, -1)
        inner = L * (Ut @ G @ U)
        grad = U @ inner @ Ut
        grad = torch.nan_to_num(grad)
        return grad.to(grad_out.dtype), None, None, None, None


def eig_power(
    A: Tensor, power: float, backward: str = "exact", degree: int = 100, eps: float = 0.0
) -> Tensor:
    """(A + εI)^power for symmetric PSD A by eigendecomposition (power 1/2 or -1/2)."""
    return _EigPower.apply(A, power, backward, degree, float(eps))
