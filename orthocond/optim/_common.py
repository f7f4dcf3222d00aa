"""Shared helpers of :mod:`optim`: argument checks and the per-optimizer plug-in registry."""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

ParamsArg = Union[Tensor, Iterable[Tensor]]

# Plug-ins (NOG, OLR) currently attached to each optimizer, in registration order. Weak
# keys and weak references to the plug-ins: a plug-in holds its optimizer, so a strong value
# would keep every optimizer (its parameters and state) alive for the whole process. While
# the optimizer lives, its hook table keeps the plug-in's bound hook, hence the plug-in.
_ATTACHED: weakref.WeakKeyDictionary[Optimizer, list] = weakref.WeakKeyDictionary()


def attach(optimizer: Optimizer, plugin: Any) -> None:
    """Register ``plugin`` on ``optimizer``; refuse a second plug-in of the same kind that
    shares parameters (two NOGs orthogonalise twice; two OLRs corrupt the scheduled lr)."""
    ids = {id(p) for p in plugin.params}
    for other in attached(optimizer):
        if other._kind == plugin._kind and ids & {id(p) for p in other.params}:
            name = type(plugin).__name__
            raise ValueError(
                f"{name}: another {name} is already registered on this optimizer for some of "
                f"these parameters; call .remove() on it before creating a new one"
            )
    _ATTACHED.setdefault(optimizer, []).append(weakref.ref(plugin))


def detach(optimizer: Optimizer, plugin: object) -> None:
    refs = _ATTACHED.get(optimizer)
    if refs is not None:
        refs[:] = [r for r in refs if r() is not None and r() is not plugin]


def attached(optimizer: Optimizer) -> list:
    """The live plug-ins registered on ``optimizer``, in registration order."""
    return [p for p in (r() for r in _ATTACHED.get(optimizer, ())) if p is not None]


def after_gradients(
    args: tuple, kwargs: dict, action: Callable[[], None]
) -> tuple[tuple, dict] | None:
    """Run ``action`` once the step's gradients exist; returns the step pre-hook's result.

    ``args``/``kwargs`` are those of ``optimizer.step`` as a pre-hook sees them (``args[0]``
    is the optimizer). Without a closure the gradients are there: run now, return None. With
    ``step(closure)`` they exist only after the optimizer calls the closure: return the
    arguments with the closure wrapped so that ``action`` runs right after it.
    """
    closure = kwargs["closure"] if "closure" in kwargs else (args[1] if len(args) > 1 else None)
    if closure is None:
        action()
        return None

    def closure_then_action() -> Any:
        loss = closure()
        action()
        return loss

    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure_then_action}
    return (args[0], closure_then_action, *args[2:]), kwargs


def check_optimizer(optimizer: object, owner: str) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{owner}: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return optimizer


def collect_params(params: ParamsArg, owner: str) -> list[Tensor]:
    """The distinct tensors of ``params`` (a tensor or an iterable of tensors), in order."""
    if isinstance(params, Tensor):
        items = [params]
    elif isinstance(params, torch.nn.Module):
        raise TypeError(
            f"{owner}: params must be a tensor or an iterable of tensors, got a Module; pass e.g. "
            "orthocond.models.pre_svd_parameters(model) or [module.weight]"
        )
    else:
        try:
            items = list(params)
        except TypeError:
            raise TypeError(
                f"{owner}: params must be a tensor or an iterable of tensors, "
                f"got {type(params).__name__}"
            ) from None
    out: list[Tensor] = []
    seen: set[int] = set()
    for i, p in enumerate(items):
        if not isinstance(p, Tensor):
            raise TypeError(f"{owner}: params[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError(f"{owner}: params is empty; pass at least one parameter")
    return out


def check_in_optimizer(params: list[Tensor], optimizer: Optimizer, owner: str) -> None:
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for i, p in enumerate(params):
        if id(p) not in known:
            raise ValueError(
                f"{owner}: params[{i}] (shape {tuple(p.shape)}) is not one of the optimizer's "
                "parameters; pass the same tensors the optimizer was built with (for a "
                "parametrized weight: orthocond.ortho.trainable_tensor(module, name))"
            )


def grad_scale_of(optimizer: Optimizer) -> Tensor | None:
    """The loss scale a fused optimizer will divide the gradients by, if GradScaler set one.

    ``GradScaler.step`` sets ``optimizer.grad_scale`` (and ``found_inf``) just before calling
    ``step`` on optimizers that unscale inside their fused kernel; step pre-hooks then see
    gradients that are still multiplied by that scale.
    """
    scale = getattr(optimizer, "grad_scale", None)
    return scale if isinstance(scale, Tensor) else None


def found_inf_of(optimizer: Optimizer) -> Tensor | None:
    """``optimizer.found_inf`` set by GradScaler for a fused optimizer (non-zero: overflow)."""
    found_inf = getattr(optimizer, "found_inf", None)
    return found_inf if isinstance(found_inf, Tensor) else None


def step_will_be_skipped(optimizer: Optimizer) -> bool:
    """True when GradScaler told a fused optimizer that this step overflowed.

    ``GradScaler.step`` sets ``optimizer.found_inf`` (non-zero on overflow) before calling
    ``step`` on optimizers that handle the scale in their fused kernel; the kernel then
    skips the update. Reading it synchronises with the device.
    """
    found_inf = getattr(optimizer, "found_inf", None)
    return isinstance(found_inf, Tensor) and bool(found_inf.item() > 0)


def group_of(optimizer: Optimizer) -> dict[int, dict]:
    """``id(param) -> its param group`` (looked up each time: ``load_state_dict`` and
    ``add_param_group`` replace or extend the groups)."""
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


def snapshot(p: Tensor, buf: Tensor | None) -> Tensor:
    """A detached copy of ``p``, written into ``buf`` when it has ``p``'s shape, dtype and
    device (the update-target plug-ins record W before every step; reusing the buffer
    spares an allocation per step)."""
    if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
        return p.detach().clone()
    return buf.copy_(p.detach())
