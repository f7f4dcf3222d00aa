"""Finding the Pre-SVD layers of a model (the layers that feed a meta-layer).

Mechanism: a Pre-SVD module carries the attribute ``is_pre_svd = True``.
:class:`orthocond.nn.GlobalCovPool` sets it on its 1x1 reduction conv (``head.pre_svd``); the
builders of :mod:`orthocond.models` set it on the stem conv (``model.conv1``) of the CIFAR
ResNets. Mark your own layer the same way (``layer.is_pre_svd = True``) to include it.
"""

from __future__ import annotations

from torch import nn

from .constraints import trainable_tensor

__all__ = ["pre_svd_modules", "pre_svd_parameters", "split_pre_svd_parameters"]


def pre_svd_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` (itself included) marked ``is_pre_svd = True``, in
    ``model.modules()`` order, each once.

    Example:
        >>> model = cifar_resnet18(width=16)
        >>> pre_svd_modules(model) == [model.conv1]
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if getattr(m, "is_pre_svd", False) is True]


def pre_svd_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable weight tensors of the Pre-SVD modules of ``model``.

    For a plain module this is ``module.weight``; for a weight parametrized with
    ``torch.nn.utils.parametrize`` (geotorch, :func:`orthocond.ortho.orthogonal`, ONI, ...)
    it is the unconstrained tensor the optimizer updates,
    ``module.parametrizations.weight.original``. Pass the result to the optimizer plug-ins,
    in their own param group: ``NOG(opt, pre_svd_parameters(model))``.

    Each entry is :func:`orthocond.ortho.trainable_tensor` of a module; ``ValueError`` for a
    marked module without a single trainable weight.

    Example:
        >>> model = gcp_resnet50(reduced_channels=128)
        >>> pre_svd_parameters(model)[0] is model.head.pre_svd.weight
        True
    """
    return [trainable_tensor(module) for module in pre_svd_modules(model)]


def split_pre_svd_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(pre_svd, rest)``: :func:`pre_svd_parameters` of ``model`` and every other trainable
    parameter of it, each once, in ``model.parameters()`` order: the two param groups the
    optimizer plug-ins expect (OLR needs the Pre-SVD weights in a group of their own).

    Example:
        >>> pre, rest = split_pre_svd_parameters(model)
        >>> opt = torch.optim.SGD([{"params": rest}, {"params": pre}], lr=0.1)
    """
    pre = pre_svd_parameters(model)
    ids = {id(p) for p in pre}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return pre, rest
