"""Meta-layers and layers: global covariance pooling, decorrelated BN, skew orthogonal conv.

Meta-layers (:data:`META_LAYERS`) compute a matrix (inverse) square root of a feature
covariance through :mod:`orthocond.linalg`. Each has a plain attribute
``capture_covariance`` (default False, not in the state_dict); when True, forward stores
the covariance it fed to the matrix function (ε on the diagonal included) as
``captured_covariance`` (detached; GlobalCovPool: Tensor[B, d, d], decorrelated BN:
Tensor[G, c, c]) for :mod:`orthocond.diagnostics`.

The layer feeding a meta-layer (the "Pre-SVD layer") is marked with the attribute
``is_pre_svd = True`` (GlobalCovPool marks its reduction conv; the model builders mark
the stem conv); :func:`orthocond.models.pre_svd_parameters` collects those weights.
"""

from __future__ import annotations

from .covpool import GlobalCovPool, global_cov_pool, pooled_covariance, triu_vectorize
from .soc import SkewOrthogonalConv2d, conv_norm_bound_matrices
from .sync_whitening import (
    SyncDecorrelatedBatchNorm1d,
    SyncDecorrelatedBatchNorm2d,
    convert_sync_decorrelated_batchnorm,
)
from .whitening import (
    DecorrelatedBatchNorm1d,
    DecorrelatedBatchNorm2d,
    zca_whiten,
    zca_whitening_matrix,
)

#: The meta-layer classes (layers with a matrix-function of a covariance inside; the
#: synchronised decorrelated BNs are subclasses, so ``isinstance`` checks cover them).
META_LAYERS = (GlobalCovPool, DecorrelatedBatchNorm2d, DecorrelatedBatchNorm1d)

__all__ = [
    "META_LAYERS",
    "DecorrelatedBatchNorm1d",
    "DecorrelatedBatchNorm2d",
    "GlobalCovPool",
    "SkewOrthogonalConv2d",
    "SyncDecorrelatedBatchNorm1d",
    "SyncDecorrelatedBatchNorm2d",
    "conv_norm_bound_matrices",
    "convert_sync_decorrelated_batchnorm",
    "global_cov_pool",
    "pooled_covariance",
    "triu_vectorize",
    "zca_whiten",
    "zca_whitening_matrix",
]
