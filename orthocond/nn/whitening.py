"""Decorrelated batch normalization (ZCA whitening per channel group).

Train mode, input (N, C, *) split into G groups of c = C/G channels; per group the
c × N·L matrix X_g of its values (L = product of the trailing dims)::

    μ_g = X_g 1 / (N·L),   Σ_g = (X_g - μ_g1ᵀ)(X_g - μ_g1ᵀ)ᵀ / (N·L)
    W_g = (Σ_g + εI)^{-1/2},   X̂_g = W_g (X_g - μ_g1ᵀ),   y = γ x̂ + β  (per channel)

so that X̂_g X̂_gᵀ / (N·L) = I - ε(Σ_g + εI)^{-1} ≈ I. The G inverse roots are one batched
:func:`orthocond.linalg.inv_sqrtm` call. Running statistics average the means and the
covariances (``new = (1 - m)·old + m·batch``, FORMULAS §4 option B); eval mode whitens with
``(Σ_run + εI)^{-1/2}`` around ``μ_run``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from orthocond import linalg
from orthocond.linalg._utils import check_matrix

from ._common import (
    check_bool,
    check_input,
    check_int,
    check_matrix_function,
    check_nonneg_float,
    is_compiling,
    matrix_function_kwargs,
    no_autocast,
)
from ._zca import Reduce, zca_core

__all__ = [
    "DecorrelatedBatchNorm1d",
    "DecorrelatedBatchNorm2d",
    "zca_whiten",
    "zca_whitening_matrix",
]


def _add_eps(cov: Tensor, eps: float) -> Tensor:
    if eps == 0:
        return cov
    return cov + eps * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)


def _update_running_stats(
    running_mean: Tensor, running_cov: Tensor, mean: Tensor, cov: Tensor, factor: float
) -> None:
    """``run ← (1 - factor)·run + factor·batch`` in place, without autograd."""
    with torch.no_grad():
        running_mean.mul_(1.0 - factor).add_(mean.reshape(-1).to(running_mean.dtype), alpha=factor)
        running_cov.mul_(1.0 - factor).add_(cov.to(running_cov.dtype), alpha=factor)


def _check_groups(num_features: int, groups: Any) -> None:
    check_int(groups, "groups")
    if num_features % groups:
        raise ValueError(f"groups={groups} must divide num_features={num_features}")


def _check_momentum(momentum: Any, allow_none: bool) -> None:
    if momentum is None and allow_none:
        return
    check_nonneg_float(momentum, "momentum")
    if momentum > 1:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")


def zca_whitening_matrix(
    cov: Tensor,
    eps: float = 1e-5,
    method: str = "eig",
    *,
    backward: str = "exact",
    iters: int | None = None,
) -> Tensor:
    """ZCA whitening matrices ``(Σ + εI)^{-1/2}`` of a batch of covariances.

    Args:
        cov (Tensor[..., c, c]): symmetric PSD covariances (e.g. one per channel group).
        eps: added to the diagonal first (default 1e-5).
        method, backward, iters: passed to :func:`orthocond.linalg.inv_sqrtm`
            (``"eig"`` with the exact Daleckii–Krein gradient by default).

    Returns Tensor[..., c, c] in ``cov``'s dtype, computed with autocast off.

    Example:
        >>> W = zca_whitening_matrix(torch.eye(3).expand(2, 3, 3) * 4.0, eps=0.0)  # 0.5·I
    """
    check_matrix(cov, "cov", finite=False)  # inv_sqrtm checks NaN/Inf once
    check_nonneg_float(eps, "eps")
    check_matrix_function(method, backward, iters)
    with no_autocast(cov.device.type):  # eps joins inside: float64 for "eig" (linalg.eig)
        return linalg.inv_sqrtm(
            cov, method, eps=float(eps), **matrix_function_kwargs(method, backward, iters)
        )


def zca_whiten(
    x: Tensor,
    groups: int = 1,
    *,
    running_mean: Tensor | None = None,
    running_cov: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    method: str = "eig",
    backward: str = "exact",
    iters: int | None = None,
) -> Tensor:
    """Functional decorrelated batch norm (ZCA whitening per channel group), like ``F.batch_norm``.

    ``y = γ·(Σ_g + εI)^{-1/2}(x_g - μ_g) + β`` per group g of ``c = C/groups`` channels, with
    the batch statistics (mean over N and the trailing dims, biased covariance) when
    ``training`` or when no running statistics are given; else with ``running_mean`` and
    ``running_cov``. In training, given running statistics are updated in place:
    ``run ← (1 - momentum)·run + momentum·batch``.

    Args:
        x (Tensor[N, C, *]): input (e.g. (N, C), (N, C, L) or (N, C, H, W)).
        groups: number of channel groups G (must divide C; default 1 = full whitening).
        running_mean (Tensor[C] | None), running_cov (Tensor[G, c, c] | None): running
            statistics, both or neither.
        weight, bias (Tensor[C] | None): per-channel affine γ, β.
        method, backward, iters: the inverse root, see :func:`zca_whitening_matrix`.

    Returns a tensor of ``x``'s shape and dtype, computed in float32/float64 (autocast off).

    Example:
        >>> x = torch.randn(64, 4, 8, 8) @ torch.randn(8, 8)
        >>> y = zca_whiten(x)  # channel covariance of y ≈ I
    """
    check_input(x, "zca_whiten", (2, 3, 4, 5), None, "(N, C, *)")
    _check_groups(x.shape[1], groups)
    _check_momentum(momentum, allow_none=False)
    if (running_mean is None) != (running_cov is None):
        raise ValueError("running_mean and running_cov must be given together or not at all")
    c = x.shape[1] // groups
    if running_mean is not None and (
        running_mean.shape != (x.shape[1],) or running_cov.shape != (groups, c, c)
    ):
        raise ValueError(
            f"expected running_mean of shape {(x.shape[1],)} and running_cov of shape "
            f"{(groups, c, c)}, got {tuple(running_mean.shape)} and {tuple(running_cov.shape)}"
        )
    def whitening(cov: Tensor) -> Tensor:
        return zca_whitening_matrix(cov, eps, method, backward=backward, iters=iters)

    running = None
    if not training and running_mean is not None:
        running = (running_mean, lambda dtype: whitening(running_cov.to(dtype)))
    update = None
    if training and running_mean is not None:
        def update(mean: Tensor, cov: Tensor, _count: Tensor) -> None:
            _update_running_stats(running_mean, running_cov, mean, cov, momentum)
    return zca_core(x, groups, weight=weight, bias=bias, whitening=whitening, running=running,
                    on_statistics=update)


class _DecorrelatedBatchNorm(nn.Module):
    """Shared implementation of :class:`DecorrelatedBatchNorm1d`/``2d``."""

    _input_ndims: tuple[int, ...] = ()
    _layout = ""

    def __init__(
        self,
        num_features: int,
        *,
        groups: int = 1,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        method: str = "eig",
        backward: str = "exact",
        iters: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        check_int(num_features, "num_features")
        _check_groups(num_features, groups)
        check_nonneg_float(eps, "eps")
        _check_momentum(momentum, allow_none=True)
        check_matrix_function(method, backward, iters)
        check_bool(affine, "affine")
        check_bool(track_running_stats, "track_running_stats")
        self.num_features = num_features
        self.groups = groups
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.method = method
        self.backward = backward
        self.iters = iters
        c = num_features // groups
        if self.affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.running_mean: Tensor | None
        self.running_cov: Tensor | None
        self.num_batches_tracked: Tensor | None
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_cov", torch.eye(c, **factory).repeat(groups, 1, 1))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_cov", None)
            self.register_buffer("num_batches_tracked", None)
        self.capture_covariance = False
        self.captured_covariance: Tensor | None = None
        self._whitening_cache: tuple[Tensor, tuple, Tensor] | None = None
        self.reset_parameters()

    # -- state ---------------------------------------------------------------------------
    def reset_running_stats(self) -> None:
        """Running mean 0, running covariance I, ``num_batches_tracked`` 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            c = self.num_features // self.groups
            self.running_cov.copy_(torch.eye(c).expand(self.groups, c, c))
            self.num_batches_tracked.zero_()
        self._whitening_cache = None

    def reset_parameters(self) -> None:
        """Reset the running statistics and the affine weight to 1, bias to 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def train(self, mode: bool = True) -> _DecorrelatedBatchNorm:
        self._whitening_cache = None
        return super().train(mode)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> _DecorrelatedBatchNorm:
        self._whitening_cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._whitening_cache = None

    # -- forward -------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        check_input(x, type(self).__name__, self._input_ndims, self.num_features, self._layout)
        if self.training and x.numel() // x.shape[1] < 2:
            raise ValueError(
                f"{type(self).__name__} needs more than 1 value per channel in training, "
                f"got input of shape {tuple(x.shape)}"
            )

    def _update_running(self, mean: Tensor, cov: Tensor) -> None:
        """Count the batch, ``run ← (1 - m)·run + m·batch`` (``m = 1/num_batches_tracked`` when
        ``momentum`` is None), drop the cached eval whitening matrix."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = float(self.momentum)
        _update_running_stats(self.running_mean, self.running_cov, mean, cov, factor)
        self._whitening_cache = None

    def _whitening(self, cov: Tensor) -> Tensor:
        """(cov + εI)^{-1/2}; stores cov + εI when ``capture_covariance`` is on."""
        if self.capture_covariance:
            self.captured_covariance = _add_eps(cov, self.eps).detach()
        return zca_whitening_matrix(cov, self.eps, self.method, backward=self.backward,
                                    iters=self.iters)

    def _cache_key(self, dtype: torch.dtype) -> tuple:
        # _version moves on every in-place write to the buffer (momentum updates, copy_,
        # load_state_dict), data_ptr on `.data =` assignments, which keep the version; the
        # buffer object itself is compared by identity (see _cached_whitening).
        cov = self.running_cov
        return (self.method, self.backward, self.iters, self.eps, dtype, cov._version,
                cov.data_ptr())

    def _cached_whitening(self, dtype: torch.dtype) -> Tensor:
        """Eval-mode (Σ_run + εI)^{-1/2}, recomputed only when its inputs change.

        The cache holds the buffer tensor it was computed from and is used only for that very
        tensor (``is``), so a buffer swapped in by ``torch.func.functional_call`` or an
        assignment never meets a stale matrix. It is bypassed while ``torch.compile`` traces
        (the matrix is part of the graph) and for inference tensors (no version counter);
        a matrix computed under ``torch.inference_mode`` is not stored, since it could not
        be used outside that mode.
        """
        cov = self.running_cov
        if is_compiling() or cov.is_inference():
            with torch.no_grad():
                return self._whitening(cov.to(dtype))
        key = self._cache_key(dtype)
        cached = self._whitening_cache
        if (self.capture_covariance or cached is None or cached[0] is not cov
                or cached[1] != key):
            with torch.no_grad():
                W = self._whitening(cov.to(dtype))
            if not torch.is_inference_mode_enabled():
                self._whitening_cache = (cov, key, W)
            return W
        return cached[2]

    def _on_statistics(self, mean: Tensor, cov: Tensor, count: Tensor) -> None:
        if self.training and self.track_running_stats:
            self._update_running(mean, cov)

    def _zca(self, x: Tensor, reduce: Reduce | None = None) -> Tensor:
        """The functional core with this layer's parameters, statistics and ``reduce``."""
        running = None
        if not (self.training or not self.track_running_stats):
            running = (self.running_mean, self._cached_whitening)
        y = zca_core(x, self.groups, weight=self.weight, bias=self.bias,
                     whitening=self._whitening, running=running,
                     on_statistics=self._on_statistics, reduce=reduce)
        if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)  # keep the layout, as BatchNorm2d
        return y

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self._zca(x)

    def whiten_batch(self, x: Tensor, copies: int = 1) -> Tensor:
        """Whiten ``x`` with its own batch statistics; running statistics stay as they are.

        ``copies > 1``: ``x`` (N, copies·C, *) holds ``copies`` inputs side by side in the
        channel dim, each whitened as this layer whitens a batch alone (groups·copies groups,
        γ and β repeated): how a probe evaluates stacked perturbed copies of a model with
        each copy's own batch statistics in one call.
        """
        check_int(copies, "copies")
        check_input(x, type(self).__name__, self._input_ndims, self.num_features * copies,
                    self._layout)

        def whitening(cov: Tensor) -> Tensor:
            return zca_whitening_matrix(cov, self.eps, self.method, backward=self.backward,
                                        iters=self.iters)

        def repeat(p: Tensor | None) -> Tensor | None:
            return None if p is None else p.repeat(copies)

        return zca_core(x, self.groups * copies, weight=repeat(self.weight),
                        bias=repeat(self.bias), whitening=whitening)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, groups={self.groups}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
            f"method={self.method!r}, backward={self.backward!r}, iters={self.iters}"
        )


class DecorrelatedBatchNorm2d(_DecorrelatedBatchNorm):
    r"""ZCA-whitening batch norm for (N, C, H, W) input; a drop-in for ``nn.BatchNorm2d``.

    Per group of ``c = C/groups`` channels, train mode whitens with the batch statistics,
    ``x̂ = (Σ_B + εI)^{-1/2}(x - μ_B)``, so the within-group channel covariance of ``x̂`` is
    ``I - ε(Σ_B + εI)^{-1}`` (identity up to ε); ``y = γ x̂ + β`` per channel.

    Running statistics (``track_running_stats=True``): ``running_mean`` (C,) and
    ``running_cov`` (G, c, c) (the biased batch covariance, ε excluded) are updated as
    ``run ← (1 - m)·run + m·batch`` with ``m = momentum``, or the cumulative average
    ``m = 1/num_batches_tracked`` when ``momentum=None``, as ``nn.BatchNorm2d`` does (which,
    unlike this layer, stores the unbiased variance: with tiny batches of M values per
    channel, eval outputs here are larger by about sqrt(M/(M-1)) than BatchNorm's).
    Eval mode uses ``(running_cov + εI)^{-1/2}`` around ``running_mean`` (FORMULAS §4
    option B: average covariances, not whitening matrices), so a sample's output does not
    depend on the rest of the batch. That whitening matrix is cached and recomputed after
    ``train()``, ``load_state_dict``, ``reset_running_stats``, ``.to()`` and every running-stat
    update; call ``train(False)`` again after editing ``running_cov`` in place by hand.
    With ``track_running_stats=False`` batch statistics are used in eval mode too.

    Args:
        num_features: C.
        groups: G, must divide C (default 1: whiten all channels jointly).
        eps: ε added to the covariance diagonal (default 1e-5).
        momentum: running-stat momentum (default 0.1; ``None`` = cumulative average).
        affine: learnable γ (init 1) and β (init 0) per channel.
        track_running_stats: keep running statistics for eval mode.
        method: inverse root of :func:`orthocond.linalg.inv_sqrtm`: ``"eig"`` (default),
            ``"ns"`` or ``"mpa"``.
        backward: eig gradient, ``"exact"`` (default), ``"svd"``, ``"taylor"``, ``"pade"``;
            ``"svd-unguarded"`` only to measure failures (it turns NaN at tied eigenvalues).
        iters: iterations for ``"ns"`` (None = linalg's default).
        device, dtype: where and in which dtype parameters and buffers are created (as
            ``torch.nn`` layers; default: the current defaults).

    The matrix function runs in float32 (float64 for float64 input) with autocast off; the
    output has the input dtype. ``capture_covariance = True`` makes forward store the
    covariance given to the inverse root, ``Σ + εI`` (Tensor[G, c, c], detached; in eval
    mode the running one), as ``captured_covariance``; ``self.eps`` is ε.

    Example:
        >>> dbn = DecorrelatedBatchNorm2d(64, eps=1e-2)
        >>> y = dbn(torch.randn(8, 64, 16, 16))
    """

    _input_ndims = (4,)
    _layout = "(N, C, H, W)"


class DecorrelatedBatchNorm1d(_DecorrelatedBatchNorm):
    r"""ZCA-whitening batch norm for (N, C) or (N, C, L) input; a drop-in for ``nn.BatchNorm1d``.

    Same math, arguments and attributes as :class:`DecorrelatedBatchNorm2d`; for (N, C, L)
    the statistics run over N and L.

    Example:
        >>> dbn = DecorrelatedBatchNorm1d(16, groups=4)
        >>> y = dbn(torch.randn(32, 16))
    """

    _input_ndims = (2, 3)
    _layout = "(N, C) or (N, C, L)"
