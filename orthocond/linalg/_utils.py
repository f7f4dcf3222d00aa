"""Numeric helpers of :mod:`orthocond.linalg` (its argument checks are :mod:`orthocond._checks`)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor

from orthocond._checks import (  # noqa: F401 - re-exported for the linalg modules
    check_choice,
    check_float,
    check_int,
    check_matrix,
    is_compiling,
    set_value_checks,
    value_checks_enabled,
)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (meta-layers never compute in 16 bits), else the dtype itself."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def no_autocast(device_type: str) -> Iterator[None]:
    """Run matrix functions in their own precision even inside ``torch.autocast``."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def sym(A: Tensor) -> Tensor:
    """Symmetric part (A + A^T) / 2 over the last two dims."""
    return 0.5 * (A + A.transpose(-2, -1))


def eye_like(A: Tensor) -> Tensor:
    n = A.shape[-1]
    return torch.eye(n, dtype=A.dtype, device=A.device).expand_as(A)


def add_diagonal(A: Tensor, value: float) -> Tensor:
    if value == 0:
        return A
    return A + value * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def safe_floor(dtype: torch.dtype) -> float:
    """Smallest normaliser we divide by: sqrt of the smallest normal number.

    Large enough that 1/x and x^{-3/2} stay finite in ``dtype``, far below any real scale.
    """
    return float(torch.finfo(dtype).tiny) ** 0.5


def batch_trace(A: Tensor) -> Tensor:
    return A.diagonal(dim1=-2, dim2=-1).sum(-1)
