"""Finding meta-layers, switching their matrix function, and the one context that pauses
their covariance capture and sets their train/eval mode.

Meta-layers (:data:`META_LAYERS`: ``GlobalCovPool``, ``DecorrelatedBatchNorm2d``/``1d`` and
their subclasses, e.g. the synchronised ones) read their plain attributes ``method``,
``backward`` and ``iters`` at every forward, so a switch takes effect at the next forward.
These attributes are not in the model's ``state_dict``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Union

from torch import nn

from orthocond._checks import check_module

from ._common import check_matrix_function
from .covpool import GlobalCovPool
from .whitening import DecorrelatedBatchNorm1d, DecorrelatedBatchNorm2d

__all__ = [
    "KEEP",
    "META_LAYERS",
    "find_meta_layers",
    "meta_layer_methods",
    "meta_layer_mode",
    "plain_module_name",
    "set_meta_layer_method",
]

#: The meta-layer classes (layers with a matrix-function of a covariance inside; the
#: synchronised decorrelated BNs are subclasses, so ``isinstance`` checks cover them).
META_LAYERS = (GlobalCovPool, DecorrelatedBatchNorm2d, DecorrelatedBatchNorm1d)

#: Value of ``iters`` that leaves each layer's own ``iters`` unchanged.
KEEP = "keep"


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def plain_module_name(name: str) -> str:
    """A module name without DDP's ``module.`` / torch.compile's ``_orig_mod.`` prefixes, so
    that the records of wrapped and plain runs carry the same keys."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def find_meta_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module of ``model`` with a ``capture_covariance`` attribute
    (names without DDP / torch.compile wrapper prefixes)."""
    return [
        (plain_module_name(n), m)
        for n, m in check_module(model).named_modules()
        if hasattr(m, "capture_covariance")
    ]


@contextlib.contextmanager
def meta_layer_mode(
    modules: Union[nn.Module, Sequence[nn.Module]], training: bool | None = None
) -> Iterator[None]:
    """Inside: no meta-layer captures its covariance and, unless ``training`` is None, every
    module is in train (True) or eval (False) mode; on exit the train flags, the capture
    flags and the captured covariances are exactly as they were (also after an exception).

    Use it around evaluation forwards and probes so that they neither disturb a
    :class:`~orthocond.analysis.ConditionMonitor` nor leave the model in another mode.

    Example:
        >>> with meta_layer_mode(model, training=False):
        ...     logits = model(x)          # eval mode, nothing captured
    """
    roots = [modules] if isinstance(modules, nn.Module) else list(modules)
    seen: dict[int, nn.Module] = {}
    for root in roots:
        for m in check_module(root, "modules").modules():
            seen.setdefault(id(m), m)
    mods = list(seen.values())
    flags = [(m, m.training) for m in mods]
    captures = [
        (m, m.capture_covariance, getattr(m, "captured_covariance", None))
        for m in mods
        if hasattr(m, "capture_covariance")
    ]
    try:
        for m, _, _ in captures:
            m.capture_covariance = False
        if training is not None:
            for m in mods:
                m.training = training
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training
        for m, capture, captured in captures:
            m.capture_covariance = capture
            m.captured_covariance = captured


def _check_types(types: Any) -> tuple[type, ...]:
    if isinstance(types, type):
        types = (types,)
    if not isinstance(types, tuple) or not types or not all(isinstance(t, type) for t in types):
        raise TypeError(f"types must be a class or a non-empty tuple of classes, got {types!r}")
    return types


def _check_triple(method: Any, backward: Any, iters: Any) -> None:
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    if not isinstance(backward, str):
        raise TypeError(f"backward must be a str, got {type(backward).__name__}")
    if isinstance(iters, str) and iters != KEEP:
        raise ValueError(f"iters must be an int >= 1, None or {KEEP!r}, got {iters!r}")
    check_matrix_function(method, backward, None if iters == KEEP else iters)


def meta_layer_methods(
    model: nn.Module, types: type | tuple[type, ...] = META_LAYERS
) -> dict[str, tuple[str, str, int | None]]:
    """``{qualified name: (method, backward, iters)}`` of every meta-layer in ``model``.

    Args:
        model: any module (itself included in the search).
        types: the layer classes to report (default :data:`orthocond.nn.META_LAYERS`).

    Example:
        >>> meta_layer_methods(gcp_resnet18(width=8, reduced_channels=16))
        {'head': ('ns', 'exact', 5)}
    """
    check_module(model)
    types = _check_types(types)
    return {
        name: (m.method, m.backward, m.iters)
        for name, m in model.named_modules()
        if isinstance(m, types)
    }


def set_meta_layer_method(
    model: nn.Module,
    method: str,
    *,
    backward: str = "exact",
    iters: int | None | str = KEEP,
    types: type | tuple[type, ...] = META_LAYERS,
) -> int:
    """Set the matrix function of every meta-layer in ``model``; returns how many were set.

    Each layer of a class in ``types`` gets ``layer.method = method``, ``layer.backward =
    backward`` and, unless ``iters`` is :data:`KEEP`, ``layer.iters = iters``. Decorrelated
    BN layers key their cached eval-mode whitening matrix on these settings, so the next
    forward recomputes it with the new method. The arguments are checked exactly as the layers'
    constructors check them, before any layer is changed.

    Args:
        model: any module (itself included).
        method: ``"eig"``, ``"ns"`` or ``"mpa"`` (:data:`orthocond.linalg.METHODS`).
        backward: eigen-gradient, ``"exact"`` (default), ``"svd"``, ``"taylor"`` or
            ``"pade"``; anything but ``"exact"`` needs ``method="eig"``.
        iters: Newton–Schulz iterations (an int >= 1), None (linalg's default) or
            ``"keep"`` (default: each layer keeps its own).
        types: the layer classes to switch (default every meta-layer; e.g.
            ``GlobalCovPool`` alone to leave decorrelated BN layers as they are).

    Returns the number of layers switched (0 when the model has none).

    Example:
        >>> set_meta_layer_method(model, "eig", backward="pade")   # SVD-Padé from now on
        1
    """
    check_module(model)
    types = _check_types(types)
    _check_triple(method, backward, iters)
    count = 0
    for m in model.modules():
        if not isinstance(m, types):
            continue
        m.method = method
        m.backward = backward
        if iters != KEEP:
            m.iters = iters
        count += 1
    return count

