"""Optimizer plug-ins that keep a Pre-SVD layer near orthogonal.

- :class:`NOG`: Nearest Orthogonal Gradient (gradient -> U V^T before the step, the paper;
  or the applied step -> its polar factor after it, for any optimizer).
- :class:`OLR`: Optimal Learning Rate for the Pre-SVD param group(s) (from the gradient, or
  the fraction of the applied step that makes the weight most orthogonal).
- :class:`CayleySGD`, :class:`CayleyAdam`: Riemannian optimizers on the Stiefel manifold.

Register NOG before OLR on the same optimizer: step hooks run in registration order.
The implementation; the top-level :mod:`optim` package re-exports it as the public face.
"""

from __future__ import annotations

from .cayley import CayleyAdam, CayleySGD
from .nog import (
    NOG,
    NOG_METHODS,
    NOG_SCALES,
    NOG_TARGETS,
    nearest_orthogonal_gradient,
    spectral_factor,
)
from .olr import OLR, OLR_MODES, is_plain_sgd, olr_exact, olr_paper, orthogonality_quartic

__all__ = [
    "NOG",
    "NOG_METHODS",
    "NOG_SCALES",
    "NOG_TARGETS",
    "OLR",
    "OLR_MODES",
    "CayleyAdam",
    "CayleySGD",
    "is_plain_sgd",
    "nearest_orthogonal_gradient",
    "olr_exact",
    "olr_paper",
    "orthogonality_quartic",
    "spectral_factor",
]
