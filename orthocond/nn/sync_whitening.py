"""Synchronised decorrelated batch normalization: ZCA whitening with statistics over all processes.

Like ``nn.SyncBatchNorm`` for :class:`~orthocond.nn.DecorrelatedBatchNorm2d`. With ``R`` processes,
process ``r`` holding the values ``X_g^{(r)}`` (c × M_r) of channel group ``g``, training mode
whitens with the statistics of the concatenated batch::

    M   = Σ_r M_r                                   (all-reduce 1: counts and per-channel sums)
    μ_g = Σ_r X_g^{(r)} 1 / M
    Σ_g = Σ_r (X_g^{(r)} - μ_g 1ᵀ)(X_g^{(r)} - μ_g 1ᵀ)ᵀ / M   (all-reduce 2: centred outer products)
    y   = γ (Σ_g + εI)^{-1/2} (X_g^{(r)} - μ_g 1ᵀ) + β

The statistics, whitening and affine are the one ZCA core of :mod:`orthocond.nn._zca`; this
layer only hands it a ``reduce`` (the all-reduce sum). So every process computes exactly what one process computes on the whole batch (up to the order
of the floating-point sums). The outer products are summed around the global mean (two
all-reduces of G·c + 1 and G·c² numbers) rather than as raw second moments ``Σ x xᵀ``: raw
moments lose all precision when ``|μ| ≫ σ`` (float32 with ``|μ|/σ = 1e4`` already cancels every
digit). Both all-reduces are differentiated (the backward all-reduces the gradient's sums and the
covariance gradient), so the gradient on each process includes the other processes' losses, as with one
process. Eval mode with running statistics and every call outside an initialised process group
(or in a group of size 1) is exactly :class:`~orthocond.nn.DecorrelatedBatchNorm2d`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._common import check_input
from .whitening import DecorrelatedBatchNorm1d, DecorrelatedBatchNorm2d

__all__ = [
    "SyncDecorrelatedBatchNorm1d",
    "SyncDecorrelatedBatchNorm2d",
    "convert_sync_decorrelated_batchnorm",
]


def _all_reduce_sum(tensor: Tensor, group: Any) -> Tensor:
    """``Σ_r t_r`` on every process, in a new tensor (the ZCA core differentiates through it)."""
    out = tensor.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def _check_process_group(process_group: Any) -> None:
    if process_group is None:
        return
    pg_type = getattr(dist, "ProcessGroup", None) if dist.is_available() else None
    if pg_type is None or not isinstance(process_group, pg_type):
        raise TypeError(
            "process_group must be None (the default group) or a torch.distributed.ProcessGroup, "
            f"got {type(process_group).__name__}"
        )


def _world_size(group: Any) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _SyncMixin:
    """Training-mode statistics all-reduced over ``process_group``; everything else inherited."""

    process_group: Any

    def _sync_active(self) -> bool:
        use_batch_stats = self.training or not self.track_running_stats  # type: ignore[attr-defined]
        return use_batch_stats and _world_size(self.process_group) > 1

    def _on_statistics(self, mean: Tensor, cov: Tensor, count: Tensor) -> None:
        if self._sync_active():
            total = int(count.item())
            if self.training and total < 2:  # type: ignore[attr-defined]
                raise ValueError(
                    f"{type(self).__name__} needs more than 1 value per channel in training over "
                    f"all processes, got {total} (local input of shape {self._local_shape})"
                )
        super()._on_statistics(mean, cov, count)  # type: ignore[misc]

    def forward(self, x: Tensor) -> Tensor:
        if not self._sync_active():
            return super().forward(x)  # type: ignore[misc]
        check_input(x, type(self).__name__, self._input_ndims, self.num_features, self._layout)  # type: ignore[attr-defined]
        self._local_shape = tuple(x.shape)
        group = self.process_group
        return self._zca(x, lambda t: _all_reduce_sum(t, group))  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        pg = "" if self.process_group is None else f", process_group={self.process_group}"
        return super().extra_repr() + pg  # type: ignore[misc]


def _init_sync(module: Any, process_group: Any) -> None:
    _check_process_group(process_group)
    module.process_group = process_group


class SyncDecorrelatedBatchNorm2d(_SyncMixin, DecorrelatedBatchNorm2d):
    r""":class:`~orthocond.nn.DecorrelatedBatchNorm2d` whose training statistics (mean and
    channel-group covariance) are computed over the whole batch of all processes of
    ``process_group`` (default: the world group), like ``nn.SyncBatchNorm``.

    Same arguments, buffers, parameters and eval behaviour as the parent, plus
    ``process_group``. Per training call: two all-reduces (per-group sums with the value
    count, then the outer products centred on the global mean); the gradient flows through
    both, so each process's input gradient accounts for every process's loss. Processes may
    hold different batch sizes (even 0, if another holds at least 2 values per channel).
    Outside an initialised ``torch.distributed`` process group, in a group of one process, and
    in eval mode with running statistics it is exactly the parent. Build it directly or convert
    a model with :func:`convert_sync_decorrelated_batchnorm`; the input is (N, C, H, W).

    Example:
        >>> # in each process, after torch.distributed.init_process_group(...)
        >>> model = convert_sync_decorrelated_batchnorm(model)   # doctest: +SKIP
        >>> ddp = torch.nn.parallel.DistributedDataParallel(model)  # doctest: +SKIP
    """

    def __init__(self, num_features: int, *, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        _init_sync(self, process_group)


class SyncDecorrelatedBatchNorm1d(_SyncMixin, DecorrelatedBatchNorm1d):
    r""":class:`~orthocond.nn.DecorrelatedBatchNorm1d` with statistics over all processes; see
    :class:`SyncDecorrelatedBatchNorm2d`. Input (N, C) or (N, C, L).

    Example:
        >>> layer = SyncDecorrelatedBatchNorm1d(16, groups=4)   # parent behaviour without a group
        >>> y = layer(torch.randn(8, 16))
    """

    def __init__(self, num_features: int, *, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        _init_sync(self, process_group)


_SYNC_OF = {
    DecorrelatedBatchNorm2d: SyncDecorrelatedBatchNorm2d,
    DecorrelatedBatchNorm1d: SyncDecorrelatedBatchNorm1d,
}


def _convert_one(module: nn.Module, process_group: Any) -> nn.Module:
    sync_cls = _SYNC_OF.get(type(module))
    if sync_cls is None:
        return module
    new = sync_cls(
        module.num_features,
        groups=module.groups,
        eps=module.eps,
        momentum=module.momentum,
        affine=module.affine,
        track_running_stats=module.track_running_stats,
        method=module.method,
        backward=module.backward,
        iters=module.iters,
        process_group=process_group,
    )
    # Share parameters (optimizers built before the conversion keep working) and buffers.
    if module.affine:
        new.weight = module.weight
        new.bias = module.bias
    for name in ("running_mean", "running_cov", "num_batches_tracked"):
        setattr(new, name, getattr(module, name))
    new.capture_covariance = module.capture_covariance
    new.train(module.training)
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new


def convert_sync_decorrelated_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every :class:`~orthocond.nn.DecorrelatedBatchNorm2d` (and ``1d``) in ``module``
    by its synchronised version, like ``nn.SyncBatchNorm.convert_sync_batchnorm``.

    The new layers reuse the old ones' parameters and buffers (same tensor objects, so an
    optimizer built before the conversion still updates them) and their configuration
    (groups, eps, momentum, method, backward, iters, training mode, ``capture_covariance``).
    Only instances of exactly these two classes are converted: layers that are already
    synchronised and user subclasses (which may override ``forward``) are left as they are.

    Args:
        module: a model or a single layer.
        process_group: the group to synchronise over (None: the default world group).

    Returns:
        The converted module (a new object when ``module`` itself is a decorrelated BN,
        else ``module`` modified in place).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), DecorrelatedBatchNorm2d(8))
        >>> net = convert_sync_decorrelated_batchnorm(net)
        >>> type(net[1]).__name__
        'SyncDecorrelatedBatchNorm2d'
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    _check_process_group(process_group)
    converted = _convert_one(module, process_group)
    if converted is not module:
        return converted
    for name, child in module.named_children():
        new_child = convert_sync_decorrelated_batchnorm(child, process_group)
        if new_child is not child:
            module.add_module(name, new_child)
    return module
