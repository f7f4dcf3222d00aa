"""Building a run from its config: the model (with its Pre-SVD constraint), the optimizer
(the Pre-SVD parameters in a param group named ``"pre_svd"``) with the NOG / OLR hooks, and
the hybrid switch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from orthocond import models, optim, ortho
from orthocond.data import DataSplits
from orthocond.nn import meta_layer_methods

from .config import TrainConfig
from .gan import build_gan_optimizer, build_generator, parse_gan_treatment
from .hybrid import HybridSwitch

__all__ = [
    "PRE_SVD_GROUP",
    "REST_GROUP",
    "build_hybrid",
    "build_model",
    "build_optimizer",
    "meta_method",
    "param_group",
]

#: The name (``group["name"]``) of the param group that holds the Pre-SVD parameters.
PRE_SVD_GROUP = "pre_svd"
#: The name of the param group of every other trainable parameter.
REST_GROUP = "rest"


def param_group(optimizer: torch.optim.Optimizer, name: str = PRE_SVD_GROUP) -> dict[str, Any]:
    """The param group of ``optimizer`` called ``name`` (``ValueError`` when there is none):
    the trainer finds its groups by name, never by position."""
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return group
    names = [g.get("name") for g in optimizer.param_groups]
    raise ValueError(f"the optimizer has no param group named {name!r} (its groups: {names})")


def build_model(cfg: TrainConfig, data: DataSplits) -> nn.Module:
    """The model of ``cfg`` for ``data`` (classes, channels, image size), with the
    orthogonality parametrisation (hard/oni/own) applied to its Pre-SVD layers."""
    r = cfg.resolved(data.name)
    if cfg.task == "gan":
        return build_generator(cfg.arch, data, latent_dim=r["latent_dim"], width=r["width"])
    common = {"in_channels": data.in_channels, "width": r["width"], "backward": cfg.backward}
    depth = int(cfg.arch[len("resnet"):])
    if cfg.task == "dbn":
        model = models.cifar_resnet(
            depth, data.num_classes, method=r["method"], eps=r["eps"], groups=cfg.groups,
            stem="soc" if cfg.ortho == "soc" else "conv", iters=cfg.iters, **common,
        )  # fmt: skip
    else:
        model = models.gcp_resnet(
            depth, data.num_classes, head="gcp", reduced_channels=r["reduced_channels"],
            method=r["method"], iters=cfg.iters if cfg.iters is not None else 5,
            cifar_stem=data.image_size <= 64, eps=r["eps"], **common,
        )  # fmt: skip
    if cfg.ortho in ("hard", "oni", "own"):
        wrap = {"hard": ortho.orthogonal, "oni": ortho.oni, "own": ortho.own}[cfg.ortho]
        for module in ortho.pre_svd_modules(model):
            wrap(module)
    return model


def build_optimizer(
    cfg: TrainConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, dict[str, Any], list[nn.Parameter]]:
    """SGD (momentum, weight decay) with the Pre-SVD parameters in a param group of their
    own, named :data:`PRE_SVD_GROUP` (find it with :func:`param_group`) -- CayleySGD with
    that group on the Stiefel manifold for ``ortho="cayley"``, no weight decay on it for
    ``ortho="hard"`` (geotorch coordinates), its own momentum / Nesterov for
    ``pre_svd_momentum`` / ``pre_svd_nesterov`` (``muon``) -- and the NOG then OLR hooks. Returns ``(optimizer, {"nog": NOG|None, "olr": OLR|None},
    pre_svd_params)``."""
    r = cfg.resolved()
    if cfg.task == "gan":
        return build_gan_optimizer(
            model, parse_gan_treatment(cfg.treatment or "vanilla"), lr=r["lr"], beta1=cfg.beta1,
            weight_decay=r["weight_decay"], groups=(PRE_SVD_GROUP, REST_GROUP),
        )  # fmt: skip
    pre, rest = ortho.split_pre_svd_parameters(model)
    if not pre:
        raise ValueError("the model has no Pre-SVD parameter (no module marked is_pre_svd)")
    if cfg.ortho == "cayley":
        opt: torch.optim.Optimizer = optim.CayleySGD(
            [{"params": pre, "stiefel": True, "name": PRE_SVD_GROUP},
             {"params": rest, "stiefel": False, "name": REST_GROUP}],
            lr=r["lr"], momentum=cfg.momentum, weight_decay=r["weight_decay"],
        )  # fmt: skip
    else:
        # "hard": the trained tensor holds geotorch coordinates around a fixed base, where
        # weight decay would pull W back to its initial orthogonal matrix, not shrink it
        pre_group: dict[str, Any] = {"params": pre, "name": PRE_SVD_GROUP}
        if cfg.ortho == "hard":
            pre_group["weight_decay"] = 0.0
        if cfg.pre_svd_momentum is not None:
            pre_group["momentum"] = cfg.pre_svd_momentum
        if cfg.pre_svd_nesterov:
            pre_group["nesterov"] = True
        opt = torch.optim.SGD(
            [pre_group, {"params": rest, "name": REST_GROUP}],
            lr=r["lr"], momentum=cfg.momentum, weight_decay=r["weight_decay"],
        )  # fmt: skip
    hooks: dict[str, Any] = {"nog": None, "olr": None}
    if cfg.nog:
        hooks["nog"] = optim.NOG(
            opt, pre, method=cfg.nog, rtol=cfg.nog_rtol, scale=cfg.nog_scale, target=cfg.nog_target
        )
    if cfg.olr:
        hooks["olr"] = optim.OLR(opt, pre, mode=cfg.olr)
    return opt, hooks, pre


def build_hybrid(cfg: TrainConfig, model: nn.Module) -> Any:
    """The :class:`~orthocond.train.HybridSwitch` of ``cfg`` on ``model`` (meta-layers to
    ``eig`` with ``cfg.hybrid_backward`` at :meth:`TrainConfig.hybrid_epoch`), or None."""
    epoch = cfg.hybrid_epoch()
    if epoch is None:
        return None
    return HybridSwitch(model, epoch, method="eig", backward=cfg.hybrid_backward)


def meta_method(model: nn.Module) -> dict[str, str]:
    """``{"meta_method", "meta_backward"}`` of the model's meta-layers (distinct values
    joined by ","), as recorded per epoch."""
    triples = meta_layer_methods(model).values()
    return {
        "meta_method": ",".join(sorted({t[0] for t in triples})),
        "meta_backward": ",".join(sorted({t[1] for t in triples})),
    }
