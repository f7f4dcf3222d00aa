"""Shared argument checks and numeric helpers of :mod:`orthocond.linalg`."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_compiling() -> bool:
    """True while Dynamo traces (``torch.compile``): skip host-side checks and state then."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


_VALUE_CHECKS = {"enabled": True}


def set_value_checks(enabled: bool) -> None:
    """Turn the NaN/Inf check of matrix inputs on (default) or off.

    The check (``ValueError`` for a non-finite input) reads a value back from the device:
    one host synchronisation per meta-layer call. A GPU training loop that wants none (or
    captures CUDA graphs) can turn it off; the layers then return NaN for NaN input, as
    PyTorch's own layers do. The ``"ns"`` and ``"mpa"`` methods then run without any host
    synchronisation; ``"eig"`` keeps the one of cuSOLVER's error check in ``eigh``. It is always skipped while ``torch.compile`` traces and while a
    CUDA graph is being captured. Shape, dtype and argument checks stay on.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _VALUE_CHECKS["enabled"] = enabled


def value_checks_enabled() -> bool:
    """Whether :func:`check_matrix` reads values back now (see :func:`set_value_checks`)."""
    if not _VALUE_CHECKS["enabled"] or is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def check_matrix(A: Tensor, name: str = "A", *, square: bool = True, finite: bool = True) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``A`` is a floating (batch of) matrix.

    The finiteness check synchronises with the device; it is skipped while
    ``torch.compile`` traces, where data-dependent control flow would break the graph,
    during CUDA graph capture and after ``set_value_checks(False)``.
    """
    if not isinstance(A, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(A).__name__}")
    if A.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {A.dtype}"
        )
    if A.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dims (..., m, n), got shape {tuple(A.shape)}"
        )
    if square and A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be square in its last two dims, got shape {tuple(A.shape)}")
    if A.shape[-1] == 0 or A.shape[-2] == 0:
        raise ValueError(f"{name} must have non-empty matrix dims, got shape {tuple(A.shape)}")
    if finite and value_checks_enabled() and not bool(torch.isfinite(A).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_eps(eps: float) -> None:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a non-negative finite float, got {eps!r}")


def check_positive_int(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


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
