"""ResNets with an SVD meta-layer: decorrelated BN after the stem (CIFAR) or a GCP head (ImageNet).

Both families share :class:`ResNet` (torchvision's ``BasicBlock``/``Bottleneck`` blocks) and
differ in the stem, the norm after it, the stride of the last stage and the head:

* ``cifar_resnet18/34/50`` (ECCV 2022 decorrelated-BN setup): 3x3 stride-1 stem conv (the
  Pre-SVD layer, marked ``is_pre_svd``), ``DecorrelatedBatchNorm2d`` right after it (plain
  ``BatchNorm2d`` with ``whitening=False``), no max-pool, stages at strides 1/2/2/2, global
  average pooling, ``fc``.
* ``gcp_resnet18/50/101`` (iSQRT-COV / CVPR 2020 setup): torchvision's 7x7 stride-2 stem and
  max-pool (or a 3x3 stride-1 stem without max-pool, ``cifar_stem=True``), BN, stages at
  strides 1/2/2/1 (last stage without down-sampling), a :class:`~orthocond.nn.GlobalCovPool`
  head (``head="gcp"``, its 1x1 reduction conv is the Pre-SVD layer) or global average
  pooling (``head="gap"``) on the same backbone, ``fc``.

Stage widths are ``width·(1, 2, 4, 8)`` (times 4 for bottlenecks); ``width=64`` is the
standard ResNet. Init: Kaiming normal (fan_out, ReLU) for every ``nn.Conv2d``, BN weight 1 and
bias 0 (also the affine of the decorrelated BN); SOC keeps its own init.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Union

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from orthocond.nn import DecorrelatedBatchNorm2d, GlobalCovPool, SkewOrthogonalConv2d
from orthocond.nn._common import check_input, check_int

__all__ = [
    "CIFAR_DEPTHS",
    "DEPTHS",
    "GCP_DEPTHS",
    "ResNet",
    "cifar_resnet",
    "cifar_resnet18",
    "cifar_resnet34",
    "cifar_resnet50",
    "gcp_resnet",
    "gcp_resnet18",
    "gcp_resnet50",
    "gcp_resnet101",
]

Block = Union[type[BasicBlock], type[Bottleneck]]


def _make_stage(block: Block, inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """``conv1 → bn1 → relu → maxpool → layer1..layer4 → head → fc``.

    Built by the ``cifar_resnet*``/``gcp_resnet*`` functions; use them rather than this class.

    Args:
        block: torchvision ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        stem_conv: the first conv (in_channels → width); stem_norm: the norm after it.
        maxpool: 3x3 stride-2 max-pool after the stem.
        width: channels of the first stage (stage i has ``width·2^i·block.expansion``).
        last_stride: stride of ``layer4`` (2 standard, 1 without down-sampling).
        head: ``"gap"`` (global average pooling) or a module mapping (B, C, H, W) to
            (B, head_features), e.g. :class:`~orthocond.nn.GlobalCovPool`.
        num_classes: outputs of ``fc``.

    Attributes:
        feature_channels (int): C, the channels leaving ``layer4``.
        in_channels (int | None): image channels expected by ``stem_conv`` (its
            ``in_channels``; None when it has none: then dim 1 is not checked).

    Input checks: ``forward``/``forward_features`` raise ``TypeError`` for a non-tensor or
    non-floating input and ``ValueError`` unless it has shape (N, in_channels, H, W).
    """

    def __init__(
        self,
        block: Block,
        layers: tuple[int, int, int, int],
        *,
        stem_conv: nn.Module,
        stem_norm: nn.Module,
        maxpool: bool,
        width: int,
        last_stride: int,
        head: str | GlobalCovPool,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.conv1 = stem_conv
        self.in_channels: int | None = getattr(stem_conv, "in_channels", None)
        self.bn1 = stem_norm
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if maxpool else nn.Identity()
        strides = (1, 2, 2, last_stride)
        inplanes = width
        for i, (blocks, stride) in enumerate(zip(layers, strides)):
            planes = width * 2**i
            self.add_module(f"layer{i + 1}", _make_stage(block, inplanes, planes, blocks, stride))
            inplanes = planes * block.expansion
        self.feature_channels = inplanes
        if isinstance(head, GlobalCovPool):
            self.head: nn.Module = head
            features = head.out_features
        elif head == "gap":
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
            features = inplanes
        else:
            raise ValueError(f"head must be 'gap' or a GlobalCovPool, got {head!r}")
        self.fc = nn.Linear(features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """x (Tensor[B, in_channels, H, W]) -> layer4 output (Tensor[B, C, H', W'])."""
        check_input(x, type(self).__name__, (4,), self.in_channels, "(N, C, H, W)")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[B, in_channels, H, W]) -> logits (Tensor[B, num_classes])."""
        return self.fc(self.head(self.forward_features(x)))


def _check_common(num_classes: int, in_channels: int, width: int) -> None:
    check_int(num_classes, "num_classes")
    check_int(in_channels, "in_channels")
    check_int(width, "width")


def _at_depth(builder: Callable[..., ResNet], depth: int) -> Callable[..., ResNet]:
    """``builder`` with its depth fixed: a function named ``<builder><depth>`` whose signature
    is the builder's without ``depth`` (the per-depth names of torchvision's API)."""

    def build(*args: Any, **kwargs: Any) -> ResNet:
        return builder(depth, *args, **kwargs)

    build.__name__ = build.__qualname__ = f"{builder.__name__}{depth}"
    build.__module__ = builder.__module__
    signature = inspect.signature(builder)
    build.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return build


#: The ResNet depths: block type and blocks per stage (torchvision's table).
DEPTHS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
CIFAR_DEPTHS = (18, 34, 50)
GCP_DEPTHS = (18, 50, 101)


def _spec(depth: int, allowed: tuple[int, ...], family: str) -> tuple[Block, tuple[int, int, int, int]]:
    if depth not in allowed:
        raise ValueError(f"depth of a {family} must be one of {allowed}, got {depth!r}")
    return DEPTHS[depth]


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    width: int = 64,
    whitening: bool = True,
    method: str = "eig",
    backward: str = "exact",
    eps: float = 1e-2,
    groups: int = 1,
    stem: str = "conv",
    iters: int | None = None,
) -> ResNet:
    """CIFAR-style ResNet of ``depth`` (18, 34 or 50) with decorrelated BN after the stem;
    ``cifar_resnet18(...)`` is ``cifar_resnet(18, ...)`` (see there for the arguments)."""
    block, layers = _spec(depth, CIFAR_DEPTHS, "cifar_resnet")
    _check_common(num_classes, in_channels, width)
    if stem == "conv":
        conv: nn.Module = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
    elif stem == "soc":
        conv = SkewOrthogonalConv2d(in_channels, width, 3, bias=False)
    else:
        raise ValueError(f"stem must be 'conv' or 'soc', got {stem!r}")
    conv.is_pre_svd = True
    if whitening:
        norm: nn.Module = DecorrelatedBatchNorm2d(
            width, groups=groups, eps=eps, method=method, backward=backward, iters=iters
        )
    else:
        norm = nn.BatchNorm2d(width)
    return ResNet(
        block,
        layers,
        stem_conv=conv,
        stem_norm=norm,
        maxpool=False,
        width=width,
        last_stride=2,
        head="gap",
        num_classes=num_classes,
    )


_CIFAR_DOC = """CIFAR-style ResNet-{depth} ({blocks}) with decorrelated BN after the stem.

    3x3 stride-1 stem conv ``in_channels → width`` (``model.conv1``, the Pre-SVD layer, marked
    ``is_pre_svd`` whatever the other options, so baselines can get the same treatment), then
    ``DecorrelatedBatchNorm2d(width, groups, eps, method, backward, iters)`` as ``model.bn1``
    (ECCV 2022: one 64x64 covariance, eps = 1e-2), ReLU, no max-pool, four stages at strides
    1/2/2/2 with widths ``width·(1, 2, 4, 8)``{expansion}, global average pooling, ``fc``.

    Args:
        num_classes: outputs (default 10).
        in_channels: image channels (3; 1 for MNIST).
        width: base width (64 standard; e.g. 16 for fast CPU runs).
        whitening: ZCA whitening after the stem (default); False = plain ``BatchNorm2d``.
        method, backward, iters: the whitening's inverse root (:func:`orthocond.linalg.inv_sqrtm`;
            ``iters`` only for ``method="ns"``, None = its default).
        eps: whitening ε (default 1e-2). groups: whitening channel groups (default 1).
        stem: ``"conv"`` (``nn.Conv2d``) or ``"soc"`` (:class:`~orthocond.nn.SkewOrthogonalConv2d`,
            an orthogonal stem).

    Example:
        >>> model = cifar_resnet{depth}(num_classes=100, width=16)
        >>> logits = model(torch.randn(2, 3, 32, 32))    # (2, 100)
    """


cifar_resnet18 = _at_depth(cifar_resnet, 18)
cifar_resnet34 = _at_depth(cifar_resnet, 34)
cifar_resnet50 = _at_depth(cifar_resnet, 50)
cifar_resnet18.__doc__ = _CIFAR_DOC.format(depth=18, blocks="basic blocks [2, 2, 2, 2]", expansion="")
cifar_resnet34.__doc__ = _CIFAR_DOC.format(depth=34, blocks="basic blocks [3, 4, 6, 3]", expansion="")
cifar_resnet50.__doc__ = _CIFAR_DOC.format(
    depth=50, blocks="bottlenecks [3, 4, 6, 3]", expansion=" (x4 after each bottleneck)"
)


def gcp_resnet(
    depth: int,
    num_classes: int = 1000,
    *,
    in_channels: int = 3,
    head: str = "gcp",
    reduced_channels: int | None = 256,
    method: str = "ns",
    iters: int | None = 5,
    backward: str = "exact",
    cifar_stem: bool = False,
    width: int = 64,
    eps: float = 0.0,
) -> ResNet:
    """ImageNet-style ResNet of ``depth`` (18, 50 or 101) with a GCP head;
    ``gcp_resnet50(...)`` is ``gcp_resnet(50, ...)`` (see there for the arguments)."""
    block, layers = _spec(depth, GCP_DEPTHS, "gcp_resnet")
    _check_common(num_classes, in_channels, width)
    if cifar_stem:
        conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
    else:
        conv = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
    channels = width * 8 * block.expansion
    if head == "gcp":
        pool: str | GlobalCovPool = GlobalCovPool(
            channels, reduced_channels, method, iters, backward=backward, eps=eps
        )
    elif head == "gap":
        pool = "gap"
    else:
        raise ValueError(f"head must be 'gcp' or 'gap', got {head!r}")
    return ResNet(
        block,
        layers,
        stem_conv=conv,
        stem_norm=nn.BatchNorm2d(width),
        maxpool=not cifar_stem,
        width=width,
        last_stride=1,
        head=pool,
        num_classes=num_classes,
    )


_GCP_DOC = """ImageNet-style ResNet-{depth} ({blocks}) with a global covariance pooling head.

    torchvision's stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool) or, with
    ``cifar_stem=True``, a 3x3 stride-1 conv without max-pool (28x28 MNIST, 32x32 CIFAR);
    stages at strides 1/2/2/1 (the last stage, its down-sample conv included, keeps the
    resolution: 224² input → 14x14x{channels}); then ``model.head``:
    ``GlobalCovPool({channels}, reduced_channels, method, iters, backward=backward, eps=eps)``
    (1x1 conv + BN + ReLU to d channels, the Pre-SVD layer ``model.head.pre_svd``, then
    triu(Σ^{{1/2}}), d(d+1)/2 features: 32,896 for d = 256) or global average pooling
    (``head="gap"``, {channels} features, same backbone); ``fc`` to ``num_classes``.
    (Channel counts shown for ``width=64``.) No pretrained weights.

    Args:
        num_classes: outputs (default 1000).
        in_channels: image channels (default 3).
        head: ``"gcp"`` (default) or ``"gap"``.
        reduced_channels: d (default 256; e.g. 128, 64 for small runs; None = no reduction).
        method, iters, backward: the root, :func:`orthocond.linalg.sqrtm` (default iSQRT-COV,
            ``"ns"`` with 5 iterations; ``"eig"`` with ``backward="pade"`` = SVD-Padé).
        cifar_stem: 3x3 stride-1 stem without max-pool for small images.
        width: base width (64 standard).
        eps: added to the covariance diagonal (default 0).

    Example:
        >>> model = gcp_resnet{depth}(num_classes=10, width=16, reduced_channels=32, cifar_stem=True)
        >>> logits = model(torch.randn(2, 3, 32, 32))    # (2, 10)
    """


gcp_resnet18 = _at_depth(gcp_resnet, 18)
gcp_resnet50 = _at_depth(gcp_resnet, 50)
gcp_resnet101 = _at_depth(gcp_resnet, 101)
gcp_resnet18.__doc__ = _GCP_DOC.format(depth=18, blocks="basic blocks [2, 2, 2, 2]", channels=512)
gcp_resnet50.__doc__ = _GCP_DOC.format(depth=50, blocks="bottlenecks [3, 4, 6, 3]", channels=2048)
gcp_resnet101.__doc__ = _GCP_DOC.format(depth=101, blocks="bottlenecks [3, 4, 23, 3]", channels=2048)
