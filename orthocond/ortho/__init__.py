"""Making a Pre-SVD weight orthogonal: hard constraints (parametrizations) and penalties.

A weight ``(C_out, C_in, kh, kw)`` is always treated as the matrix ``(C_out, C_in*kh*kw)``.
The skew-orthogonal convolution (another "orthogonal weight" option) is
:class:`orthocond.nn.SkewOrthogonalConv2d`.
"""

from __future__ import annotations

from .constraints import (
    ONI,
    OWN,
    TRIVIALIZATIONS,
    FlattenedOrthogonal,
    oni,
    orthogonal,
    own,
    trainable_tensor,
)
from .latent import HESSIAN_REDUCTIONS, hessian_penalty, ol_penalty
from .penalties import (
    PENALTY_KINDS,
    SRIP_SCHEDULES,
    dso_penalty,
    mc_penalty,
    orthogonality_error,
    orthogonality_penalty,
    so_penalty,
    srip_penalty,
    srip_schedule,
)
from .pre_svd import pre_svd_modules, pre_svd_parameters, split_pre_svd_parameters

__all__ = [
    "HESSIAN_REDUCTIONS",
    "hessian_penalty",
    "ol_penalty",
    "ONI",
    "OWN",
    "PENALTY_KINDS",
    "SRIP_SCHEDULES",
    "TRIVIALIZATIONS",
    "FlattenedOrthogonal",
    "dso_penalty",
    "mc_penalty",
    "oni",
    "orthogonal",
    "orthogonality_error",
    "orthogonality_penalty",
    "own",
    "pre_svd_modules",
    "pre_svd_parameters",
    "split_pre_svd_parameters",
    "so_penalty",
    "srip_penalty",
    "srip_schedule",
    "trainable_tensor",
]
