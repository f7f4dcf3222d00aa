"""Meta-layers and layers: global covariance pooling, decorrelated BN, skew orthogonal conv.

Meta-layers (:data:`META_LAYERS`) compute a matrix (inverse) square root of a feature
covariance through :mod:`orthocond.linalg`. Each has a plain attribute
``capture_covariance`` (default False, not in the state_dict); when True, forward stores
the covariance it fed to the matrix function (ε on the diagonal included) as
``captured_covariance`` (detached; GlobalCovPool: Tensor[B, d, d], decorrelated BN:
Tensor[G, c, c]) for :class:`orthocond.analysis.ConditionMonitor`.

The layer feeding a meta-layer (the "Pre-SVD layer") is marked with the attribute
``is_pre_svd = True`` (GlobalCovPool marks its reduction conv; the model builders mark
the stem conv); :func:`orthocond.ortho.pre_svd_parameters` collects those weights. :mod:`.meta` finds the
meta-layers, switches their matrix function and pauses their capture (:func:`meta_layer_mode`).
"""

from __future__ import annotations

from .covpool import GlobalCovPool, global_cov_pool, pooled_covariance, triu_vectorize
from .meta import (
    KEEP,
    META_LAYERS,
    find_meta_layers,
    meta_layer_methods,
    meta_layer_mode,
    plain_module_name,
    set_meta_layer_method,
)
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

__all__ = [
    "KEEP",
    "META_LAYERS",
    "DecorrelatedBatchNorm1d",
    "DecorrelatedBatchNorm2d",
    "GlobalCovPool",
    "SkewOrthogonalConv2d",
    "SyncDecorrelatedBatchNorm1d",
    "SyncDecorrelatedBatchNorm2d",
    "conv_norm_bound_matrices",
    "convert_sync_decorrelated_batchnorm",
    "find_meta_layers",
    "global_cov_pool",
    "meta_layer_methods",
    "meta_layer_mode",
    "plain_module_name",
    "pooled_covariance",
    "set_meta_layer_method",
    "triu_vectorize",
    "zca_whiten",
    "zca_whitening_matrix",
]
