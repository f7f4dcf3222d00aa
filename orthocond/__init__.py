"""orthocond: covariance conditioning for networks with an SVD meta-layer.

Library: :mod:`orthocond.linalg` (differentiable matrix functions), :mod:`orthocond.nn`
(meta-layers), :mod:`orthocond.ortho` (orthogonal Pre-SVD weights, penalties, finding the
Pre-SVD layer), :mod:`orthocond.optim` (NOG, OLR, Cayley SGD/Adam; the top-level package
:mod:`optim` is its public face), :mod:`orthocond.models` (model builders).
Application: :mod:`orthocond.data`, :mod:`orthocond.analysis` (conditioning monitor,
landscape, robustness), :mod:`orthocond.train`, :mod:`orthocond.bench`, :mod:`orthocond.cli`.
"""

from . import linalg, models, nn, optim, ortho
from ._version import __version__

__all__ = ["linalg", "models", "nn", "optim", "ortho", "__version__"]
