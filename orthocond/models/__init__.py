"""Model builders: ResNets with decorrelated BN (CIFAR) or a GCP head (ImageNet), and the
helpers that find their Pre-SVD weights (``NOG(opt, pre_svd_parameters(model))``)."""

from __future__ import annotations

from orthocond.ortho.pre_svd import pre_svd_modules, pre_svd_parameters

from .resnet import (
    ResNet,
    cifar_resnet,
    cifar_resnet18,
    cifar_resnet34,
    cifar_resnet50,
    gcp_resnet,
    gcp_resnet18,
    gcp_resnet50,
    gcp_resnet101,
)

__all__ = [
    "ResNet",
    "cifar_resnet",
    "cifar_resnet18",
    "cifar_resnet34",
    "cifar_resnet50",
    "gcp_resnet",
    "gcp_resnet18",
    "gcp_resnet50",
    "gcp_resnet101",
    "pre_svd_modules",
    "pre_svd_parameters",
]
