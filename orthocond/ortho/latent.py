"""Disentanglement penalties of generators: EigenGAN's soft orthogonality loss and the
Hessian Penalty (the baselines NOG/OLR are compared with in the TPAMI 2023 extension).
"""

from __future__ import annotations

from typing import Callable, Iterable, Union

import torch
from torch import Tensor

from orthocond._checks import check_choice, check_float, check_int

from .penalties import _gram_minus_eye, as_matrix

__all__ = ["HESSIAN_REDUCTIONS", "hessian_penalty", "ol_penalty"]

HESSIAN_REDUCTIONS = ("max", "mean")


def ol_penalty(weights: Union[Tensor, Iterable[Tensor]]) -> Tensor:
    r"""EigenGAN's soft orthogonality loss :math:`\mathrm{mean}((UU^T - I)^2)`, summed over weights.

    Each weight is flattened to ``(rows, rest)`` (a subspace basis ``(dims, C·H·W)``, or a
    DCGAN first layer ``(latent_dim, C_out·k·k)``) and the mean is over the entries of the
    smaller Gram (``dims x dims`` for a wide matrix). EigenGAN multiplies it by 100; that
    factor is the caller's loss weight. Equals :func:`so_penalty` divided by the Gram's
    number of entries.

    Args:
        weights: one tensor or an iterable of tensors with at least 2 dims.

    Returns:
        Scalar tensor, differentiable; 0 exactly for (semi-)orthogonal weights.

    Example:
        >>> ol_penalty(torch.eye(3, 5)).item()
        0.0
        >>> ol_penalty(2 * torch.eye(2, 4)).item()   # ((4-1)^2 * 2 + 0 * 2) / 4
        4.5
    """
    if isinstance(weights, Tensor):
        weights = [weights]
    terms = []
    for i, weight in enumerate(weights):
        W = as_matrix(weight, f"weights[{i}]")
        terms.append(_gram_minus_eye(W, rows=W.shape[0] <= W.shape[1]).square().mean())
    if not terms:
        raise ValueError("weights must hold at least one tensor")
    return torch.stack(terms).sum()


def hessian_penalty(
    generator: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    k: int = 2,
    epsilon: float = 0.1,
    reduction: str = "max",
    output: Tensor | None = None,
    generator_rng: torch.Generator | None = None,
) -> Tensor:
    r"""Hessian Penalty (Peebles et al., ECCV 2020), finite-difference form.

    For each output entry :math:`G_o`, the off-diagonal mass of its Hessian in ``z`` is
    estimated by the variance of second directional derivatives along Rademacher directions
    :math:`v` (entries ±1):

    .. math::
        v^T H_o v \approx \frac{G_o(z + \epsilon v) - 2 G_o(z) + G_o(z - \epsilon v)}{\epsilon^2},
        \qquad \mathrm{HP} = \mathrm{reduce}_o\,\mathrm{Var}_v[v^T H_o v]

    (unbiased variance over ``k`` directions; :math:`\mathrm{Var}_v[v^THv] = 2\sum_{i\ne j}H_{ij}^2`
    in expectation, 0 for a diagonal Hessian). ``reduction`` ``"max"`` (the paper's default)
    or ``"mean"`` over the output entries of each sample; the result is averaged over the
    batch. Differentiable in the generator's parameters (``2k + 1`` forward passes, or ``2k``
    when ``output = generator(z)`` is given).

    Args:
        generator: maps ``z (Tensor[B, d])`` to a tensor ``(B, ...)``.
        z (Tensor[B, d]): latent codes.
        k (int): directions, at least 2. Default 2.
        epsilon (float): finite-difference step, > 0. Default 0.1.
        reduction: ``"max"`` or ``"mean"``.
        output: ``generator(z)`` if already computed.
        generator_rng: ``torch.Generator`` for the directions (default: the global RNG).

    Returns:
        Scalar tensor.

    Example:
        >>> hessian_penalty(lambda z: z[:, :1] * z[:, 1:2], torch.randn(8, 2)).item() > 0
        True
        >>> hessian_penalty(lambda z: z.square(), torch.randn(8, 2)).item() < 1e-6
        True
    """
    if not isinstance(z, Tensor) or not z.is_floating_point():
        raise TypeError("z must be a floating-point torch.Tensor")
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"z must have shape (B, d) with B >= 1, got {tuple(z.shape)}")
    check_int(k, "k", minimum=2)  # a variance needs two directions
    check_float(epsilon, "epsilon", low=0, low_open=True)
    check_choice(reduction, "reduction", HESSIAN_REDUCTIONS)
    center = generator(z) if output is None else output
    signs = torch.randint(0, 2, (k, *z.shape), generator=generator_rng, device="cpu")
    directions = (signs.to(device=z.device, dtype=z.dtype) * 2 - 1) * epsilon
    second = torch.stack(
        [(generator(z + v) - 2 * center + generator(z - v)) / epsilon**2 for v in directions]
    )
    variance = second.var(dim=0, unbiased=True).reshape(z.shape[0], -1)
    per_sample = variance.amax(dim=1) if reduction == "max" else variance.mean(dim=1)
    return per_sample.mean()
