"""orthocond: covariance conditioning for networks with an SVD meta-layer.

Subpackages: :mod:`orthocond.linalg` (differentiable matrix functions), :mod:`orthocond.nn`
(meta-layers), :mod:`orthocond.ortho` (orthogonal Pre-SVD weights, penalties),
:mod:`orthocond.models` (model builders), :mod:`orthocond.diagnostics` (conditioning monitor).
The optimizer plug-ins (NOG, OLR, Cayley SGD) live in the top-level package :mod:`optim`.
"""

from . import diagnostics, linalg, models, nn, ortho

__version__ = "0.1.0"

__all__ = ["diagnostics", "linalg", "models", "nn", "ortho", "__version__"]
