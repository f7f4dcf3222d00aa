"""The one functional core of ZCA whitening (decorrelated batch norm).

Every ZCA layer of :mod:`orthocond.nn` (``zca_whiten``, ``DecorrelatedBatchNorm1d/2d`` and their
synchronised versions) runs :func:`zca_core`: group the channels, batch statistics (or the
running ones), the running update, whiten, affine. The synchronised layers differ only in the
``reduce`` they pass (a sum over processes); everything else is this file.

Layout. Input (N, C, *) with L trailing positions is viewed as (B, G, c, P): as (N, G, c, L)
when each sample has at least ``_MIN_POSITIONS`` positions (a view, no copy; N small GEMMs
over P = L columns beat one long GEMM over N·L columns on the CPU, ~2× at L = 256), else as
(1, G, c, N·L) (one permuted copy). The output comes back in the input's layout.

Two fused autograd functions keep the passes over the (c, N·L) activations to what the
math needs (forward: sum, centre, two GEMMs; backward: two sums, one subtraction, three GEMMs):

* ``_CentredStatistics``: ``μ = Σ x / M``, ``x_c = x - μ1ᵀ``, ``Σ = x_c x_cᵀ / M`` (centred, so
  that ``|μ| ≫ σ`` loses no digits). Backward ``∂x = ∂x_c - (∂x_c 1 / M) 1ᵀ + (∂Σ + ∂Σᵀ) x_c / M`` (the
  covariance does not depend on μ at the mean), with the sums reduced over processes.
* ``_Whiten``: ``y = diag(γ) W (x - s) + β`` as one ``baddbmm`` with the bias
  ``β - diag(γ) W s`` (``s`` = the running mean in eval mode, none in training, where x is
  already centred); ``∂W = diag(γ) P``, ``∂γ = rowsum(P ∘ W)`` from the one c × c product
  ``P = ∂y (x - s)ᵀ``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._common import compute_dtype, no_autocast

Reduce = Callable[[Tensor], Tensor]
"""Sum of a tensor over processes (returns a new tensor, not differentiable)."""

_MIN_POSITIONS = 32


def group_channels(x: Tensor, groups: int) -> Tensor:
    """(N, C, *) -> (B, G, C/G, P), a view where possible (see the module doc)."""
    n, c, positions = x.shape[0], x.shape[1] // groups, math.prod(x.shape[2:])
    grouped = x.reshape(n, groups, c, positions)
    if positions >= _MIN_POSITIONS:
        return grouped
    return grouped.permute(1, 2, 0, 3).reshape(1, groups, c, n * positions)


def ungroup_channels(y: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`group_channels`."""
    if y.shape[0] == shape[0] and y.shape[-1] == math.prod(shape[2:]):
        return y.reshape(shape)
    groups, c = y.shape[1:3]
    return y.reshape(groups, c, shape[0], math.prod(shape[2:])).permute(2, 0, 1, 3).reshape(shape)


def _bmm_view(t: Tensor) -> Tensor:
    """(B, G, r, s) -> (B·G, r, s)."""
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[-2:])


def _per_sample(matrix: Tensor, batch: int) -> Tensor:
    """(G, r, s) -> (B·G, r, s) for one ``bmm`` over the (B, G) grid."""
    return _bmm_view(matrix.expand(batch, *matrix.shape))


class _CentredStatistics(torch.autograd.Function):
    """xg (B, G, c, P) -> centred xg, mean (G, c), covariance (G, c, c), value count."""

    @staticmethod
    def forward(ctx, xg: Tensor, reduce: Reduce | None):  # type: ignore[override]
        groups, c = xg.shape[1:3]
        sums = xg.sum(dim=(0, 3))
        count = torch.full((1,), float(xg.shape[0] * xg.shape[3]), dtype=xg.dtype, device=xg.device)
        if reduce is not None:  # one all-reduce for the sums and the count
            packed = reduce(torch.cat([sums.reshape(-1), count]))
            sums, count = packed[:-1].reshape(groups, c), packed[-1:].clone()
        total = count.clamp_min(1.0)
        mean = sums / total
        centred = (xg - mean.unsqueeze(-1)).contiguous()
        scatter = (centred @ centred.transpose(-2, -1)).sum(0)
        if reduce is not None:
            scatter = reduce(scatter)
        cov = scatter / total
        ctx.save_for_backward(centred, total)
        ctx.reduce = reduce
        ctx.mark_non_differentiable(mean, count)
        return centred, mean, cov, count

    @staticmethod
    @once_differentiable  # the formula is not differentiable again: fail, never answer wrongly
    def backward(ctx, g_centred: Tensor | None, _g_mean, g_cov: Tensor | None, _g_count):  # type: ignore[override]
        centred, total = ctx.saved_tensors
        reduce = ctx.reduce
        if g_centred is None:
            g_centred = torch.zeros_like(centred)
        g_sum = g_centred.sum(dim=(0, 3))
        if reduce is not None:
            g_sum = reduce(g_sum)
        grad = g_centred - (g_sum / total).unsqueeze(-1)  # a new tensor: updated in place below
        if g_cov is not None:
            if reduce is not None:
                g_cov = reduce(g_cov.contiguous())
            two_sym = (g_cov + g_cov.transpose(-2, -1)) / total
            _bmm_view(grad).baddbmm_(_per_sample(two_sym, centred.shape[0]), _bmm_view(centred))
        return grad, None


class _Whiten(torch.autograd.Function):
    """y = diag(γ) W (x - s) + β per group; x (B, G, c, P), W (G, c, c), γ, β, s (G, c).

    Returns y as (B·G, c, P): a tensor of its own, not a view made inside the function (the
    caller reshapes it), so that in-place ops on the layer output (``ReLU(inplace=True)``) work.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, weight: Tensor | None, bias: Tensor | None,  # type: ignore[override]
                shift: Tensor | None) -> Tensor:
        batch = x.shape[0]
        scaled = W if weight is None else W * weight.unsqueeze(-1)
        offset = bias
        if shift is not None:
            moved = -(scaled @ shift.unsqueeze(-1)).squeeze(-1)
            offset = moved if offset is None else offset + moved
        x3 = _bmm_view(x)
        ctx.save_for_backward(x, W, weight, shift)
        if offset is None:
            return torch.bmm(_per_sample(scaled, batch), x3)
        return torch.baddbmm(_per_sample(offset.unsqueeze(-1), batch), _per_sample(scaled, batch), x3)

    @staticmethod
    @once_differentiable  # the formula is not differentiable again: fail, never answer wrongly
    def backward(ctx, gy3: Tensor):  # type: ignore[override]
        x, W, weight, shift = ctx.saved_tensors
        need_x, need_w, need_weight, need_bias, need_shift = ctx.needs_input_grad
        batch = x.shape[0]
        scaled = W if weight is None else W * weight.unsqueeze(-1)
        gy3 = gy3.contiguous()
        gy = gy3.view(x.shape)
        g_x = g_W = g_weight = g_bias = g_shift = None
        if need_x:
            g_x = torch.bmm(_per_sample(scaled.transpose(-2, -1), batch), gy3).view(x.shape)
        g_sum = gy.sum(dim=(0, 3)) if (need_bias or need_shift or shift is not None) else None
        if need_w or need_weight:
            outer = (gy @ x.transpose(-2, -1)).sum(0)  # Σ ∂y xᵀ, (G, c, c)
            if shift is not None:
                outer = outer - g_sum.unsqueeze(-1) * shift.unsqueeze(-2)
            if need_w:
                g_W = outer if weight is None else outer * weight.unsqueeze(-1)
            if need_weight:
                g_weight = (outer * W).sum(-1)
        if need_bias:
            g_bias = g_sum
        if need_shift:
            g_shift = -(scaled.transpose(-2, -1) @ g_sum.unsqueeze(-1)).squeeze(-1)
        return g_x, g_W, g_weight, g_bias, g_shift


def zca_core(
    x: Tensor,
    groups: int,
    *,
    weight: Tensor | None,
    bias: Tensor | None,
    whitening: Callable[[Tensor], Tensor],
    running: tuple[Tensor, Callable[[torch.dtype], Tensor]] | None = None,
    on_statistics: Callable[[Tensor, Tensor, Tensor], None] | None = None,
    reduce: Reduce | None = None,
) -> Tensor:
    """ZCA whitening per channel group, the steps every layer shares (see the module doc).

    Args:
        x (Tensor[N, C, *]): input, any floating dtype (computes in float32/float64,
            autocast off; returns ``x``'s dtype).
        groups: G, dividing C.
        weight, bias (Tensor[C] | None): per-channel affine.
        whitening: covariance (G, c, c) -> whitening matrix (G, c, c), for batch statistics.
        running: ``(running_mean (C,), dtype -> whitening matrix)`` to whiten with running
            statistics instead of the batch's; None: batch statistics.
        on_statistics: called with the batch ``(mean (G, c), covariance, value count (1,))``
            (running updates, count checks); not called with running statistics.
        reduce: sum over processes for the batch statistics (None: this process only).
    """
    with no_autocast(x.device.type):
        work = x.to(compute_dtype(x.dtype))
        xg = group_channels(work, groups)
        c = xg.shape[2]
        w = None if weight is None else weight.to(work.dtype).reshape(groups, c)
        b = None if bias is None else bias.to(work.dtype).reshape(groups, c)
        if running is None:
            centred, mean, cov, count = _CentredStatistics.apply(xg, reduce)
            if on_statistics is not None:
                on_statistics(mean, cov, count)
            y = _Whiten.apply(centred, whitening(cov), w, b, None).view(centred.shape)
        else:
            running_mean, running_whitening = running
            shift = running_mean.to(work.dtype).reshape(groups, c)
            xg = xg.contiguous()
            y = _Whiten.apply(xg, running_whitening(work.dtype), w, b, shift).view(xg.shape)
        return ungroup_channels(y, x.shape).to(x.dtype)
