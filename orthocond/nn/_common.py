"""Argument checks of the meta-layers of :mod:`orthocond.nn`, built on :mod:`orthocond._checks`."""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from orthocond import linalg
from orthocond._checks import check_bool, check_float, check_int, is_compiling
from orthocond.linalg._utils import compute_dtype, no_autocast

__all__ = [
    "check_bool",
    "check_input",
    "check_int",
    "check_matrix_function",
    "check_nonneg_float",
    "compute_dtype",
    "is_compiling",
    "matrix_function_kwargs",
    "no_autocast",
]


def check_nonneg_float(value: Any, name: str) -> None:
    """Raise unless ``value`` is a finite real number >= 0."""
    check_float(value, name, low=0)


def check_matrix_function(method: Any, backward: Any, iters: Any) -> None:
    """Validate the (method, backward, iters) triple given to :mod:`orthocond.linalg`.

    ``method`` in ``linalg.METHODS``; ``backward`` in ``linalg.ALL_BACKWARDS`` and only
    ``"exact"`` unless ``method == "eig"`` (the other methods have a single backward);
    ``iters`` is ``None`` (linalg's default) or a positive int.
    """
    if method not in linalg.METHODS:
        raise ValueError(f"method must be one of {linalg.METHODS}, got {method!r}")
    if backward not in linalg.ALL_BACKWARDS:
        raise ValueError(f"backward must be one of {linalg.ALL_BACKWARDS}, got {backward!r}")
    if method != "eig" and backward != "exact":
        raise ValueError(
            f"backward={backward!r} selects an eigendecomposition gradient and needs method='eig'; "
            f"method={method!r} has only backward='exact'"
        )
    if iters is not None:
        check_int(iters, "iters")


def matrix_function_kwargs(method: str, backward: str, iters: int | None) -> dict[str, Any]:
    """Keyword arguments for ``linalg.sqrtm``/``linalg.inv_sqrtm``: ``iters`` counts Newton–Schulz
    iterations and is passed for ``method="ns"`` only (mpa keeps linalg's Lyapunov default)."""
    kwargs: dict[str, Any] = {"backward": backward}
    if method == "ns" and iters is not None:
        kwargs["iters"] = iters
    return kwargs


def check_input(
    x: Any, name: str, ndims: Sequence[int], channels: int | None, layout: str
) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``x`` is a floating tensor of an allowed rank
    whose dim 1 has ``channels`` entries (any when None); ``layout`` names the expected shape."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor input, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got dtype {x.dtype}")
    if x.ndim not in ndims:
        raise ValueError(
            f"{name} expects input of shape {layout} ({' or '.join(map(str, ndims))} dims), "
            f"got shape {tuple(x.shape)}"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} expects {channels} channels in dim 1, got shape {tuple(x.shape)}"
        )
