"""Public matrix functions: square root, inverse square root, covariance, condition number."""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import (
    add_diagonal,
    check_choice,
    check_float,
    check_int,
    check_matrix,
    compute_dtype,
    no_autocast,
    sym,
)
from .eig import ALL_BACKWARDS, eig_power
from .mpa import mpa_root
from .newton_schulz import newton_schulz

METHODS = ("eig", "ns", "mpa")
DEFAULT_NS_ITERS = 5
DEFAULT_LYAPUNOV_ITERS = 8
DEFAULT_TAYLOR_DEGREE = 100


def _matrix_root(
    A: Tensor,
    inverse: bool,
    method: str,
    iters: int | None,
    backward: str,
    eps: float,
    degree: int,
) -> Tensor:
    check_matrix(A, "A")
    check_choice(method, "method", METHODS)
    check_choice(backward, "backward", ALL_BACKWARDS)
    check_float(eps, "eps", low=0)
    if method != "eig" and backward != "exact":
        raise ValueError(
            f"backward={backward!r} applies to method='eig' only; method={method!r} has its own "
            "backward (ns: autograd through the iterations, mpa: Lyapunov)"
        )
    if iters is not None:
        check_int(iters, "iters")
    check_int(degree, "taylor_degree")
    work = compute_dtype(A.dtype)
    with no_autocast(A.device.type):
        if method == "eig":  # ε joins in float64, in the eigenvalue domain (see eig._eigh64)
            out = eig_power(A.to(work), -0.5 if inverse else 0.5, backward, degree, float(eps))
            return out.to(A.dtype)
        X = add_diagonal(A.to(work), float(eps))
        if method == "ns":
            out = newton_schulz(sym(X), iters or DEFAULT_NS_ITERS, inverse)
        else:
            out = mpa_root(sym(X), inverse, iters or DEFAULT_LYAPUNOV_ITERS)
    return out.to(A.dtype)


def sqrtm(
    A: Tensor,
    method: str = "ns",
    *,
    iters: int | None = None,
    backward: str = "exact",
    eps: float = 0.0,
    taylor_degree: int = DEFAULT_TAYLOR_DEGREE,
) -> Tensor:
    r"""Differentiable square root :math:`(A + \epsilon I)^{1/2}` of symmetric PSD matrices.

    Methods:

    * ``"ns"`` (default, iSQRT-COV): coupled Newton–Schulz after trace normalisation,
      ``iters`` iterations (default 5), post-compensated by :math:`\sqrt{\mathrm{tr} A}`.
      Matmuls only; a coarse root on ill-conditioned spectra (eigenvalue :math:`\lambda` of
      :math:`A/\mathrm{tr}A` maps to :math:`\approx 7.59\lambda` as :math:`\lambda\to 0` at N = 5).
    * ``"eig"``: ``torch.linalg.eigh`` in float64, :math:`U \Lambda^{1/2} U^T`; ``eps`` is added
      in float64 to the eigenvalues (honoured exactly even below the input dtype's
      resolution; negative eigenvalues count by their magnitude where they are rounding
      noise, as 0 where A is clearly indefinite), then eigenvalues are floored at
      :math:`\max(\lambda_{max} n\,\epsilon_{res}, \sqrt{\mathrm{tiny}})` with
      :math:`\epsilon_{res}` of float64 when ``eps > 0``, of the input dtype when ``eps = 0``
      (see :mod:`orthocond.linalg.eig`). ``backward`` picks
      the gradient: ``"exact"`` (Daleckii–Krein, :math:`L_{ij} = 1/(\sqrt{\lambda_i}+\sqrt{\lambda_j})`,
      finite at repeated eigenvalues), ``"svd"`` (textbook, :math:`K_{ij}=1/(\lambda_i-\lambda_j)`
      guarded), ``"taylor"`` (degree ``taylor_degree``, default 100), ``"pade"`` (SVD-Padé);
      ``"svd-unguarded"`` is the split textbook formula without a guard, which turns Inf/NaN at
      tied eigenvalues: for failure studies only. See :mod:`orthocond.linalg.eig`.
    * ``"mpa"``: [5/5] Matrix Padé Approximant after Frobenius normalisation, Lyapunov backward by
      ``iters`` (default 8) coupled Newton–Schulz sign iterations.

    Args:
        A (Tensor[..., n, n]): symmetric positive semi-definite, float32 or float64 (float16 and
            bfloat16 compute in float32). Only the symmetric part is used.
        method: ``"ns"``, ``"eig"`` or ``"mpa"``.
        iters: Newton–Schulz iterations (ns) or Lyapunov iterations (mpa).
        backward: gradient of the ``"eig"`` method.
        eps: added to the diagonal first (default 0; for ``"eig"`` in float64, see above).

    Returns:
        Tensor[..., n, n] in ``A``'s dtype. Computed in float32 or better even under autocast.

    Example:
        >>> X = torch.randn(8, 16, 100)
        >>> C = covariance(X)
        >>> S = sqrtm(C, method="eig")
        >>> torch.allclose(S @ S, C, atol=1e-4)
        True
    """
    return _matrix_root(A, False, method, iters, backward, eps, taylor_degree)


def inv_sqrtm(
    A: Tensor,
    method: str = "eig",
    *,
    iters: int | None = None,
    backward: str = "exact",
    eps: float = 0.0,
    taylor_degree: int = DEFAULT_TAYLOR_DEGREE,
) -> Tensor:
    r"""Differentiable inverse square root :math:`(A + \epsilon I)^{-1/2}` of symmetric PSD matrices.

    Same methods and arguments as :func:`sqrtm`; ``"ns"`` returns :math:`Z_N/\sqrt{\mathrm{tr}A}`,
    ``"mpa"`` returns :math:`P^{-1}Q/\sqrt{\|A\|_F}`, and the exact eig backward uses
    :math:`L_{ij} = -1/(\sqrt{\lambda_i}\sqrt{\lambda_j}(\sqrt{\lambda_i}+\sqrt{\lambda_j}))`.
    Default ``method="eig"``. A singular ``A`` without ``eps`` gives large but finite values.
    ``A`` must be positive semi-definite: ``"ns"`` normalises by the trace and returns NaN for
    an indefinite ``A`` with a trace <= 0 (``"eig"`` floors negative eigenvalues instead).

    Args:
        A (Tensor[..., n, n]): symmetric positive semi-definite.

    Returns:
        Tensor[..., n, n] in ``A``'s dtype.

    Example:
        >>> C = covariance(torch.randn(4, 8, 200, dtype=torch.float64))
        >>> W = inv_sqrtm(C)
        >>> torch.allclose(W @ C @ W, torch.eye(8, dtype=torch.float64).expand(4, 8, 8))
        True
    """
    return _matrix_root(A, True, method, iters, backward, eps, taylor_degree)


def covariance(X: Tensor) -> Tensor:
    r"""Centred (biased) covariance :math:`\Sigma = \frac1M (X - \mu 1^T)(X - \mu 1^T)^T`.

    Centres by subtracting the mean over the last dim; no :math:`M \times M` centring matrix.

    Args:
        X (Tensor[..., d, M]): ``d`` features observed at ``M`` positions.

    Returns:
        Tensor[..., d, d].

    Example:
        >>> covariance(torch.randn(2, 3, 10)).shape
        torch.Size([2, 3, 3])
    """
    check_matrix(X, "X", square=False, finite=False)
    Xc = X - X.mean(dim=-1, keepdim=True)
    return (Xc @ Xc.transpose(-2, -1)) / X.shape[-1]


def cond(A: Tensor) -> Tensor:
    r"""Condition number :math:`\lambda_{max}/\lambda_{min}` of symmetric PSD matrices, in float64.

    Returns ``inf`` where :math:`\lambda_{min} \le 0` (singular), ``1`` for a multiple of the
    identity, ``nan`` for a matrix holding NaN or Inf (a diverged run is reported, not
    raised). Not differentiable (a diagnostic).

    Args:
        A (Tensor[..., n, n]).

    Returns:
        Tensor[...] of float64.

    Example:
        >>> cond(torch.diag(torch.tensor([1.0, 10.0])))
        tensor(10., dtype=torch.float64)
    """
    check_matrix(A, "A", finite=False)
    with torch.no_grad():
        A64 = A.detach().to(torch.float64)
        finite = torch.isfinite(A64).flatten(-2).all(-1)
        evals = torch.linalg.eigvalsh(sym(torch.where(finite[..., None, None], A64, 0.0)))
        lo, hi = evals[..., 0], evals[..., -1]
        kappa = torch.where(lo > 0, hi / lo.clamp_min(torch.finfo(torch.float64).tiny), torch.inf)
        return torch.where(finite, kappa, torch.nan)
