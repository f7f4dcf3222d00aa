"""Optimizer plug-ins that keep a Pre-SVD layer near orthogonal.

- :class:`NOG`: Nearest Orthogonal Gradient (step pre-hook, gradient -> U V^T).
- :class:`OLR`: Optimal Learning Rate for the Pre-SVD param group(s).
- :class:`CayleySGD`, :class:`CayleyAdam`: Riemannian optimizers on the Stiefel manifold.

Register NOG before OLR on the same optimizer: step hooks run in registration order.
The implementation; the top-level :mod:`optim` package re-exports it as the public face.
"""

from __future__ import annotations

from .cayley import CayleyAdam, CayleySGD
from .nog import NOG, NOG_METHODS, NOG_SCALES, nearest_orthogonal_gradient
from .olr import OLR, OLR_MODES, olr_exact, olr_paper, orthogonality_quartic

__all__ = [
    "NOG",
    "NOG_METHODS",
    "NOG_SCALES",
    "OLR",
    "OLR_MODES",
    "CayleyAdam",
    "CayleySGD",
    "nearest_orthogonal_gradient",
    "olr_exact",
    "olr_paper",
    "orthogonality_quartic",
]
