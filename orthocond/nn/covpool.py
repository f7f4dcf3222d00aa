"""Global covariance pooling (GCP): MPN-COV / iSQRT-COV / SVD-Padé heads.

For one sample with features X ∈ R^{d×M} (d channels, M = H·W positions)::

    μ = X 1 / M,   Σ = (X - μ1ᵀ)(X - μ1ᵀ)ᵀ / M + εI,   P = Σ^{1/2},   out = triu(P)

``Σ^{1/2}`` comes from :func:`orthocond.linalg.sqrtm` with any method/backward:
iSQRT-COV = ``method="ns"`` (Newton–Schulz, trace pre-normalisation and post-compensation),
MPN-COV = ``method="eig"``, SVD-Padé = ``method="eig", backward="pade"``,
MPA-Lya = ``method="mpa"``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from orthocond import linalg

from ._common import (
    check_bool,
    check_input,
    check_int,
    check_matrix_function,
    check_nonneg_float,
    compute_dtype,
    is_compiling,
    matrix_function_kwargs,
    no_autocast,
)

__all__ = ["GlobalCovPool", "global_cov_pool", "pooled_covariance", "triu_vectorize"]


def _triu_index(d: int, device: torch.device) -> Tensor:
    rows, cols = torch.triu_indices(d, d, device=device)
    return rows * d + cols


# Eager calls reuse the index; a compiled graph builds it itself (dynamo does not honour the cache).
_triu_index_cached = functools.lru_cache(maxsize=32)(_triu_index)


def triu_vectorize(A: Tensor) -> Tensor:
    """Upper triangle of ``A`` (Tensor[..., d, d]), diagonal included, row-major.

    Output Tensor[..., d(d+1)/2] in the order (0,0), (0,1), …, (0,d-1), (1,1), (1,2), …,
    (d-1,d-1): entry (i, j), i <= j, sits at ``k = i·d - i(i-1)/2 + (j - i)``.
    For a symmetric ``A`` this keeps every distinct entry once.

    Example:
        >>> triu_vectorize(torch.arange(9.0).reshape(3, 3))
        tensor([0., 1., 2., 4., 5., 8.])
    """
    if not isinstance(A, Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must have shape (..., d, d), got {tuple(A.shape)}")
    d = A.shape[-1]
    index = _triu_index(d, A.device) if is_compiling() else _triu_index_cached(d, A.device)
    return A.flatten(-2)[..., index]


def pooled_covariance(x: Tensor, eps: float = 0.0) -> Tensor:
    """Per-sample spatial covariance of a feature map, plus ``eps`` on the diagonal.

    x (Tensor[B, d, H, W]) -> Tensor[B, d, d]: ``Σ_b = (X_b - μ_b)(X_b - μ_b)ᵀ / (H·W) + εI``
    with ``X_b`` the (d, H·W) matrix of sample ``b`` (biased, centred by subtracting the mean,
    never through an M×M centring matrix). Computed in float32 (float64 for float64 input),
    autocast off.

    Example:
        >>> pooled_covariance(torch.randn(2, 8, 7, 7), eps=1e-5).shape
        torch.Size([2, 8, 8])
    """
    check_input(x, "pooled_covariance", (4,), None, "(B, C, H, W)")
    check_nonneg_float(eps, "eps")
    return _pooled_covariance(x, eps, compute_dtype(x.dtype))


def _pooled_covariance(x: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    with no_autocast(x.device.type):
        cov = linalg.covariance(x.flatten(2).to(dtype))
        if eps > 0:
            cov = cov + eps * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return cov


def _covariance_dtype(x: Tensor, method: str) -> torch.dtype:
    """float64 for the ``"eig"`` root, which runs in float64 anyway.

    With more channels than positions (C = 256, 14×14) the covariance is singular; formed in
    float32 its null space is float32 noise of size λ_max·1e-7, which the root's gradient
    (divided differences ~ 1/√λ on that null space) amplifies: the float32 input gradient was
    1.5e-2 off a float64 computation, 1e-7 with the covariance formed in float64 (at ~10 % of
    the eigendecomposition's cost). The matmul-only methods keep the input's precision.
    """
    return torch.float64 if method == "eig" else compute_dtype(x.dtype)


def _root_and_vectorize(
    cov: Tensor, method: str, iters: int | None, backward: str, vectorize: bool
) -> Tensor:
    with no_autocast(cov.device.type):
        root = linalg.sqrtm(cov, method, **matrix_function_kwargs(method, backward, iters))
        return triu_vectorize(root) if vectorize else root


def global_cov_pool(
    x: Tensor,
    method: str = "ns",
    iters: int | None = 5,
    *,
    backward: str = "exact",
    eps: float = 0.0,
    vectorize: bool = True,
) -> Tensor:
    """Matrix-power-normalised covariance pooling of a feature map (no channel reduction).

    ``out_b = triu(Σ_b^{1/2})`` with ``Σ_b`` from :func:`pooled_covariance`, the root from
    :func:`orthocond.linalg.sqrtm` (``method`` in ``"eig"|"ns"|"mpa"``, ``iters`` for ``"ns"``
    only, ``backward`` for ``"eig"``).

    Args:
        x (Tensor[B, d, H, W]): features.
        vectorize: return Tensor[B, d(d+1)/2] (upper triangle, :func:`triu_vectorize`
            order) if True (default), else the full Tensor[B, d, d].

    Returns the input dtype; computes in float32 or float64 even under autocast, and for
    ``method="eig"`` forms the covariance in float64 (the eigendecomposition runs in float64;
    a float32 covariance's null space would be noise that the root's gradient amplifies).

    Example:
        >>> y = global_cov_pool(torch.randn(2, 8, 7, 7), method="eig")  # (2, 36)
    """
    check_input(x, "global_cov_pool", (4,), None, "(B, C, H, W)")
    check_matrix_function(method, backward, iters)
    check_bool(vectorize, "vectorize")
    check_nonneg_float(eps, "eps")
    cov = _pooled_covariance(x, eps, _covariance_dtype(x, method))
    out = _root_and_vectorize(cov, method, iters, backward, vectorize)
    return out.to(x.dtype)


class GlobalCovPool(nn.Module):
    r"""Global covariance pooling head with a Pre-SVD channel reduction.

    ``x → ReLU(BN(Conv1x1(x)))`` (the Pre-SVD layer, ``in_channels → reduced_channels``,
    no bias) ``→ Σ = cov(features) + εI → Σ^{1/2} → triu`` (see :func:`global_cov_pool`).

    Args:
        in_channels: channels C of the input (B, C, H, W).
        reduced_channels: d, output channels of the 1x1 reduction conv (default 256, as in
            iSQRT-COV); ``None`` pools the input channels directly (d = C, no Pre-SVD layer).
        method: ``"ns"`` (iSQRT-COV, default), ``"eig"`` (MPN-COV / SVD; covariance and root
            in float64, see :func:`global_cov_pool`) or ``"mpa"``.
        iters: Newton–Schulz iterations for ``method="ns"`` (default 5; ignored otherwise).
        vectorize: output (B, d(d+1)/2) upper triangle if True, else (B, d, d).
        backward: eigendecomposition gradient for ``method="eig"``: ``"exact"`` (default),
            ``"svd"``, ``"taylor"`` or ``"pade"`` (SVD-Padé); ``"svd-unguarded"`` only to measure
            failures (it turns NaN at tied eigenvalues).
        eps: added to the covariance diagonal before the root (default 0).
        device, dtype: where and in which dtype parameters and buffers are created (as
            ``torch.nn`` layers; default: the current defaults).

    Attributes:
        pre_svd (nn.Conv2d | None): the Pre-SVD layer, marked ``is_pre_svd = True`` so that
            :func:`orthocond.models.pre_svd_parameters` finds it.
        bn (nn.BatchNorm2d | None): the BN after it.
        dim (int): d. out_features (int): d(d+1)/2, or d·d (the flattened size) when
            ``vectorize=False``.
        capture_covariance (bool): when True, forward stores the Σ (εI included) given to
            the root as ``captured_covariance`` (Tensor[B, d, d], detached). Not in state_dict.

    Example:
        >>> head = GlobalCovPool(2048, 256)            # iSQRT-COV, 32,896 features
        >>> z = head(torch.randn(2, 2048, 14, 14))     # (2, 32896)
    """

    def __init__(
        self,
        in_channels: int,
        reduced_channels: int | None = 256,
        method: str = "ns",
        iters: int | None = 5,
        vectorize: bool = True,
        *,
        backward: str = "exact",
        eps: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        check_int(in_channels, "in_channels")
        if reduced_channels is not None:
            check_int(reduced_channels, "reduced_channels")
        check_matrix_function(method, backward, iters)
        check_nonneg_float(eps, "eps")
        check_bool(vectorize, "vectorize")
        self.in_channels = in_channels
        self.reduced_channels = reduced_channels
        self.method = method
        self.iters = iters
        self.backward = backward
        self.eps = float(eps)
        self.vectorize = vectorize
        self.pre_svd: nn.Conv2d | None
        self.bn: nn.BatchNorm2d | None
        if reduced_channels is None:
            self.pre_svd, self.bn = None, None
            self.dim = in_channels
        else:
            self.pre_svd = nn.Conv2d(in_channels, reduced_channels, 1, bias=False, **factory)
            self.pre_svd.is_pre_svd = True
            self.bn = nn.BatchNorm2d(reduced_channels, **factory)
            self.dim = reduced_channels
        d = self.dim
        self.out_features = d * (d + 1) // 2 if self.vectorize else d * d
        self.capture_covariance = False
        self.captured_covariance: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[B, in_channels, H, W]) -> Tensor[B, out_features] or Tensor[B, d, d]."""
        check_input(x, type(self).__name__, (4,), self.in_channels, "(B, C, H, W)")
        features = x
        if self.pre_svd is not None:
            features = torch.relu(self.bn(self.pre_svd(x)))
        cov = _pooled_covariance(features, self.eps, _covariance_dtype(features, self.method))
        if self.capture_covariance:
            self.captured_covariance = cov.detach().to(compute_dtype(features.dtype))
        out = _root_and_vectorize(cov, self.method, self.iters, self.backward, self.vectorize)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, reduced_channels={self.reduced_channels}, "
            f"method={self.method!r}, iters={self.iters}, backward={self.backward!r}, "
            f"eps={self.eps}, vectorize={self.vectorize}, out_features={self.out_features}"
        )
