"""Differentiable matrix functions of orthocond: no ``nn.Module`` here.

All functions are batched over leading dims ``(..., n, n)``, accept float32 and float64
(half types compute in float32), return the input dtype and never loop over the batch.
"""

from ._utils import set_value_checks
from .eig import ALL_BACKWARDS, BACKWARDS, UNSAFE_BACKWARDS, set_eigh_streams
from .functional import METHODS, cond, covariance, inv_sqrtm, sqrtm
from .mpa import lyapunov_sign
from .polar import POLAR_METHODS, polar, polar_express_coefficients

__all__ = [
    "ALL_BACKWARDS",
    "BACKWARDS",
    "UNSAFE_BACKWARDS",
    "METHODS",
    "POLAR_METHODS",
    "cond",
    "covariance",
    "inv_sqrtm",
    "lyapunov_sign",
    "polar",
    "polar_express_coefficients",
    "set_eigh_streams",
    "set_value_checks",
    "sqrtm",
]
