"""The one family of argument validators of orthocond (every package checks through these).

Each check raises ``TypeError`` for a value of the wrong kind and ``ValueError`` for a value
of the right kind outside its range, with a message that names the argument. They are cheap
host-side checks, except the finiteness checks of tensors, which read one value back from the
device and can be turned off with :func:`set_value_checks` (``orthocond.linalg`` re-exports it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "as_weight_matrix",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_matrix",
    "check_module",
    "is_compiling",
    "resolve_device",
    "set_value_checks",
    "value_checks_enabled",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_VALUE_CHECKS = {"enabled": True}


def is_compiling() -> bool:
    """True while Dynamo traces (``torch.compile``): skip host-side checks and state then."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def set_value_checks(enabled: bool) -> None:
    """Turn the NaN/Inf check of matrix inputs on (default) or off.

    The check (``ValueError`` for a non-finite input) reads a value back from the device:
    one host synchronisation per meta-layer call. A GPU training loop that wants none (or
    captures CUDA graphs) can turn it off; the layers then return NaN for NaN input, as
    PyTorch's own layers do. The ``"ns"`` and ``"mpa"`` methods then run without any host
    synchronisation; ``"eig"`` keeps the one of cuSOLVER's error check in ``eigh``. It is
    always skipped while ``torch.compile`` traces and while a CUDA graph is being captured.
    Shape, dtype and argument checks stay on.
    """
    check_bool(enabled, "enabled")
    _VALUE_CHECKS["enabled"] = enabled


def value_checks_enabled() -> bool:
    """Whether the finiteness checks read values back now (see :func:`set_value_checks`)."""
    if not _VALUE_CHECKS["enabled"] or is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def check_bool(value: Any, name: str) -> bool:
    """``TypeError`` unless ``value`` is a bool (``bool("no")`` would silently be True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_int(value: Any, name: str, *, minimum: int | None = 1, allow_none: bool = False) -> Any:
    """``TypeError`` unless ``value`` is an int (not a bool; None with ``allow_none``);
    ``ValueError`` when it is below ``minimum`` (None: no bound)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        none = " or None" if allow_none else ""
        raise TypeError(f"{name} must be an int{none}, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
    lo = "-inf" if low is None else f"{low:g}"
    return f"in {'(' if low_open or low is None else '['}{lo}, {high:g}{')' if high_open else ']'}"


def check_float(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
    allow_inf: bool = False,
) -> Any:
    """Raise unless ``value`` is a finite real number (an int or float, not a bool) in the
    interval given by ``low``/``high`` (closed unless ``*_open``); returns it as a float
    (None passes with ``allow_none``; +inf with ``allow_inf``)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        none = " or None" if allow_none else ""
        raise TypeError(f"{name} must be a float{none}, got {type(value).__name__}")
    ok = math.isfinite(value) or (allow_inf and value == math.inf)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        where = _interval(low, high, low_open, high_open)
        raise ValueError(f"{name} must be a finite float{' ' + where if where else ''}, got {value!r}")
    return float(value)


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_module(value: Any, name: str = "model") -> nn.Module:
    """``TypeError`` unless ``value`` is an ``nn.Module``."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def check_matrix(A: Any, name: str = "A", *, square: bool = True, finite: bool = True) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``A`` is a floating (batch of) matrix
    ``(..., m, n)``, square when asked, non-empty and (with ``finite``) free of NaN/Inf.

    The finiteness check synchronises with the device; it is skipped while ``torch.compile``
    traces, during CUDA graph capture and after ``set_value_checks(False)``.
    """
    if not isinstance(A, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(A).__name__}")
    if A.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {A.dtype}"
        )
    if A.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., m, n), got shape {tuple(A.shape)}")
    if square and A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be square in its last two dims, got shape {tuple(A.shape)}")
    if A.shape[-1] == 0 or A.shape[-2] == 0:
        raise ValueError(f"{name} must have non-empty matrix dims, got shape {tuple(A.shape)}")
    if finite and value_checks_enabled() and not bool(torch.isfinite(A).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def as_weight_matrix(weight: Any, name: str = "weight", *, finite: bool = True) -> Tensor:
    """``weight`` as the matrix ``(C_out, C_in*kh*kw)`` after the checks every weight gets:
    a floating tensor of >= 2 dims (Linear ``(out, in)`` or Conv ``(C_out, C_in, kh, kw)``),
    non-empty and, with ``finite`` (one host sync, see :func:`set_value_checks`), finite."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {weight.dtype}")
    if weight.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dims (Linear (out, in) or Conv (C_out, C_in, kh, kw)), "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(weight.shape)}")
    if finite and value_checks_enabled() and not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return weight.reshape(weight.shape[0], -1)


def resolve_device(device: Any) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; a string or ``torch.device``
    otherwise as given (``ValueError`` for a malformed one or for CUDA without a GPU)."""
    if isinstance(device, torch.device):
        dev = device
    elif not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu', 'cuda:0', got {device!r}")
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
            ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} requested but CUDA is not available; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist ({torch.cuda.device_count()} GPUs)")
    return dev
