"""Matrix Padé Approximant forward and Lyapunov backward (Song et al., ICLR 2022).

Forward, ``s = ||A||_F`` (floored), ``Z = I - A / s``, spectrum in ``[0, 1)``:
``A^{1/2} ≈ √s Q(Z)^{-1} P(Z)`` and ``A^{-1/2} ≈ P(Z)^{-1} Q(Z) / √s`` with the [5/5] Padé
approximant ``P/Q`` of ``√(1 - z)``. ``P`` and ``Q`` commute, so the order does not matter.

Backward: the gradient of the *true* root evaluated at the computed root ``B``:
``X = ∂l/∂A`` solves the Lyapunov equation ``B X + X B = C``, ``C = sym(∂l/∂B)``, through
the coupled Newton–Schulz sign iteration on ``[[B, C], [0, -B]]``::

    B_{k+1} = B_k (3I - B_k²) / 2
    C_{k+1} = [C_k (3I - B_k²) - B_k² C_k + B_k C_k B_k] / 2,   X ≈ C_K / 2

after scaling ``B_0 = B / σ``, ``C_0 = C / σ`` (σ = ||B||_F, so spec(B_0) ⊂ (0, 1]). The inverse
root ``Y`` uses ``Y X + X Y = -Y² sym(Ḡ) Y²``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._utils import (
    check_int,
    check_matrix,
    is_compiling,
    safe_floor,
    sym,
    value_checks_enabled,
)

# [5/5] Padé coefficients of sqrt(1 - z), lowest degree first.
_P = (1.0, -11.0 / 4, 11.0 / 4, -77.0 / 64, 55.0 / 256, -11.0 / 1024)
_Q = (1.0, -9.0 / 4, 7.0 / 4, -35.0 / 64, 15.0 / 256, -1.0 / 1024)


def _frobenius(A: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(A)[..., None, None]


def _pade_pair(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n = A.shape[-1]
    scale = _frobenius(A).clamp_min(safe_floor(A.dtype))
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    Z = eye - A / scale
    P = _P[0] * eye + _P[1] * Z
    Q = _Q[0] * eye + _Q[1] * Z
    power = Z
    for p, q in zip(_P[2:], _Q[2:]):
        power = power @ Z
        P = P + p * power
        Q = Q + q * power
    return P, Q, scale


def lyapunov_sign(B: Tensor, C: Tensor, iters: int = 8) -> Tensor:
    r"""Solve the Lyapunov equation :math:`BX + XB = C` by the coupled Newton–Schulz sign iteration.

    Uses :math:`\mathrm{sign}([[B, C], [0, -B]]) = [[I, 2X], [0, -I]]` after scaling both
    blocks by :math:`\sigma = \|B^2\|_F^{1/2}` (:math:`\ge \|B\|_2`, and tighter than
    :math:`\|B\|_F` by up to :math:`n^{1/4}` on flat spectra, so small eigenvalues start closer
    to 1 and converge in fewer steps); converges for symmetric positive definite ``B``
    (spec(B/σ) ⊂ (0, 1]), 6 matmuls per iteration.

    Args:
        B (Tensor[..., n, n]): symmetric positive definite.
        C (Tensor[..., n, n]): right-hand side, same shape and dtype as ``B``.
        iters: sign iterations (default 8).

    Returns:
        X (Tensor[..., n, n]).

    Example:
        >>> B = torch.diag(torch.tensor([1.0, 0.5], dtype=torch.float64))
        >>> X = lyapunov_sign(B, torch.eye(2, dtype=torch.float64), 30)
        >>> torch.allclose(B @ X + X @ B, torch.eye(2, dtype=torch.float64))
        True
    """
    if not is_compiling():
        check_matrix(B, "B")
        check_matrix(C, "C")
        if C.shape != B.shape:
            raise ValueError(f"C must have the shape of B {tuple(B.shape)}, got {tuple(C.shape)}")
        check_int(iters, "iters")
    return _lyapunov_sign(B, C, iters)


def _lyapunov_sign(B: Tensor, C: Tensor, iters: int, sigma: Tensor | None = None) -> Tensor:
    """Core of :func:`lyapunov_sign`; ``sigma`` (Tensor[..., 1, 1]) defaults to ||B²||_F^{1/2}."""
    if sigma is None:
        sigma = _frobenius(B @ B).sqrt()
    sigma = sigma.clamp_min(safe_floor(B.dtype))
    Bk, Ck = B / sigma, C / sigma
    eye = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
    for _ in range(iters):
        B2 = Bk @ Bk
        T = 3.0 * eye - B2
        Ck = 0.5 * (Ck @ T - B2 @ Ck + Bk @ Ck @ Bk)
        Bk = 0.5 * (Bk @ T)
    return 0.5 * Ck


def _spd_solve(D: Tensor, N: Tensor) -> Tensor:
    """D^{-1} N for the Padé denominators, which are symmetric positive definite.

    p(z) >= 1/1024 and q(z) >= 11/1024 on spec(Z) ⊂ [0, 1], so Cholesky always succeeds; it is
    cheaper than LU and, unlike batched LU on MKL, survives ``torch.set_num_threads`` changes.
    LU remains the fallback should rounding ever break definiteness.
    """
    L, info = torch.linalg.cholesky_ex(sym(D))
    if is_compiling():
        return torch.cholesky_solve(N, L)
    if value_checks_enabled():
        if bool((info != 0).any()):  # one host sync
            return torch.linalg.solve(D, N)
        return torch.cholesky_solve(N, L)
    # no host sync: pay for both solves and pick per matrix on the device
    failed = (info != 0)[..., None, None]
    fallback = torch.linalg.solve_ex(D, N)[0]
    return torch.where(failed, fallback, torch.cholesky_solve(N, L))


class _MPARoot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A: Tensor, inverse: bool, lyap_iters: int) -> Tensor:  # type: ignore[override]
        P, Q, scale = _pade_pair(A)
        if inverse:
            out = _spd_solve(P, Q) / scale.sqrt()
        else:
            out = _spd_solve(Q, P) * scale.sqrt()
        out = sym(out)
        ctx.save_for_backward(out, scale)
        ctx.inverse, ctx.lyap_iters = inverse, lyap_iters
        return out

    @staticmethod
    @once_differentiable  # the formula is not differentiable again: fail, never answer wrongly
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        root, scale = ctx.saved_tensors
        G = sym(grad_out)
        # sigma ~ ||root²||_F^{1/2}: sqrt(||A||_F) for the square root (FORMULAS §3); for the
        # inverse root, root² = A^{-1} is at hand
        if ctx.inverse:
            root2 = root @ root
            C = -(root2 @ G @ root2)
            sigma = _frobenius(root2).sqrt()
        else:
            C = G
            sigma = scale.sqrt()
        grad = _lyapunov_sign(root, C, ctx.lyap_iters, sigma)
        return torch.nan_to_num(sym(grad)), None, None


def mpa_root(A: Tensor, inverse: bool, lyap_iters: int = 8) -> Tensor:
    """MPA [5/5] square root (or inverse root) of symmetric PSD ``A`` with Lyapunov backward."""
    return _MPARoot.apply(A, inverse, lyap_iters)
