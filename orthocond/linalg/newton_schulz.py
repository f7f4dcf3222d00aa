"""iSQRT-COV coupled Newton–Schulz iteration (Li et al., CVPR 2018).

With ``t = tr(A)`` (floored) and ``Y_0 = A / t``, ``Z_0 = I``::

    T_k = (3I - Z_{k-1} Y_{k-1}) / 2,   Y_k = Y_{k-1} T_k,   Z_k = T_k Z_{k-1}

``Y_N → (A/t)^{1/2}`` and ``Z_N → (A/t)^{-1/2}`` (quadratically once ``||I - A/t|| < 1``, which
the trace normalisation guarantees for PSD A). Post-compensation: ``A^{1/2} ≈ √t Y_N``,
``A^{-1/2} ≈ Z_N / √t``. Matmuls only; the gradient is autograd through the iterations,
i.e. the exact gradient of the approximate forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import batch_trace, safe_floor


def newton_schulz(A: Tensor, iters: int, inverse: bool) -> Tensor:
    """Coupled Newton–Schulz root of symmetric PSD ``A`` (Tensor[..., n, n])."""
    n = A.shape[-1]
    trace = batch_trace(A).clamp_min(safe_floor(A.dtype) * n)[..., None, None]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    Y = A / trace
    # Z_0 = I: the first iteration needs no matmul for T_1 = (3I - Y_0)/2 nor for Z_1 = T_1.
    T = 1.5 * eye - 0.5 * Y
    Z = T
    if iters > 1 or not inverse:
        Y = Y @ T
    for k in range(1, iters):
        T = 1.5 * eye - 0.5 * (Z @ Y)
        last = k == iters - 1
        if not (last and inverse):
            Y = Y @ T
        if not (last and not inverse):
            Z = T @ Z
    if inverse:
        return Z / trace.sqrt()
    return Y * trace.sqrt()
