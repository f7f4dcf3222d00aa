"""Model builders and the Pre-SVD parameter lookup."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torchvision.models.resnet import BasicBlock, Bottleneck

from orthocond import ortho
from orthocond.models import (
    cifar_resnet18,
    cifar_resnet34,
    cifar_resnet50,
    gcp_resnet18,
    gcp_resnet50,
    gcp_resnet101,
    pre_svd_modules,
    pre_svd_parameters,
)
from orthocond.nn import (
    META_LAYERS,
    DecorrelatedBatchNorm2d,
    GlobalCovPool,
    SkewOrthogonalConv2d,
)

CIFAR = [cifar_resnet18, cifar_resnet34, cifar_resnet50]
GCP = [gcp_resnet18, gcp_resnet50, gcp_resnet101]
DEPTHS = {
    cifar_resnet18: (BasicBlock, [2, 2, 2, 2]),
    cifar_resnet34: (BasicBlock, [3, 4, 6, 3]),
    cifar_resnet50: (Bottleneck, [3, 4, 6, 3]),
    gcp_resnet18: (BasicBlock, [2, 2, 2, 2]),
    gcp_resnet50: (Bottleneck, [3, 4, 6, 3]),
    gcp_resnet101: (Bottleneck, [3, 4, 23, 3]),
}


def _forward_backward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    out = model(x)
    assert out.shape == (x.shape[0], num_classes) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for p in pre_svd_parameters(model):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("builder", CIFAR)
def test_cifar_resnets_run_and_find_pre_svd(builder):
    torch.manual_seed(0)
    model = builder(num_classes=7, width=8)
    block, layers = DEPTHS[builder]
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == layers
    assert isinstance(model.layer1[0], block)
    assert isinstance(model.bn1, DecorrelatedBatchNorm2d)
    assert model.bn1.eps == 1e-2 and model.bn1.groups == 1 and model.bn1.method == "eig"
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.in_features == 8 * 8 * block.expansion
    assert pre_svd_modules(model) == [model.conv1]
    params = pre_svd_parameters(model)
    assert len(params) == 1 and params[0] is model.conv1.weight
    _forward_backward(model, torch.randn(2, 3, 16, 16), 7)


@pytest.mark.parametrize("builder", GCP)
def test_gcp_resnets_run_and_find_pre_svd(builder):
    torch.manual_seed(0)
    model = builder(num_classes=5, width=8, reduced_channels=16, cifar_stem=True)
    block, layers = DEPTHS[builder]
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == layers
    assert isinstance(model.head, GlobalCovPool)
    assert model.head.in_channels == 8 * 8 * block.expansion and model.head.method == "ns"
    assert model.fc.in_features == 16 * 17 // 2
    params = pre_svd_parameters(model)
    assert len(params) == 1 and params[0] is model.head.pre_svd.weight
    _forward_backward(model, torch.randn(2, 3, 16, 16), 5)


def test_gcp_resnet50_default_structure():
    """Last stage without down-sampling, 2048 -> 256 reduction, 32,896-d head."""
    model = gcp_resnet50(num_classes=10)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    first = model.layer4[0]
    assert first.conv2.stride == (1, 1) and first.downsample[0].stride == (1, 1)
    assert model.layer3[0].conv2.stride == (2, 2)
    assert model.head.pre_svd.in_channels == 2048 and model.head.pre_svd.out_channels == 256
    assert model.head.out_features == 32896 and model.fc.in_features == 32896
    assert gcp_resnet18(num_classes=2).head.pre_svd.in_channels == 512


def test_gcp_imagenet_stem_resolution():
    """7x7/2 stem + max-pool, strides 1/2/2/1: layer4 sees H/16 (224 -> 14)."""
    model = gcp_resnet18(num_classes=3, width=4, reduced_channels=8)
    x = torch.randn(2, 3, 64, 64)
    assert model.forward_features(x).shape == (2, 32, 4, 4)
    _forward_backward(model, x, 3)


def test_gap_head_same_backbone():
    gcp = gcp_resnet50(num_classes=4, width=8, reduced_channels=16)
    gap = gcp_resnet50(num_classes=4, width=8, head="gap")
    assert gap.layer4[0].conv2.stride == (1, 1)
    backbone = {k for k in gcp.state_dict() if not k.startswith(("head.", "fc."))}
    assert backbone == {k for k in gap.state_dict() if not k.startswith("fc.")}
    assert gap.fc.in_features == 8 * 8 * 4
    assert pre_svd_parameters(gap) == []
    assert gap(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_mnist_inputs():
    gcp = gcp_resnet18(num_classes=10, in_channels=1, cifar_stem=True, width=8, reduced_channels=16)
    assert gcp.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 64, 7, 7)
    _forward_backward(gcp, torch.randn(2, 1, 28, 28), 10)
    cifar = cifar_resnet18(in_channels=1, width=8)
    assert cifar.conv1.in_channels == 1
    assert cifar(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_cifar_options():
    plain = cifar_resnet18(width=8, whitening=False)
    assert type(plain.bn1) is nn.BatchNorm2d
    assert not any(isinstance(m, META_LAYERS) for m in plain.modules())
    assert pre_svd_parameters(plain) == [plain.conv1.weight]  # same treatment for baselines
    dbn = cifar_resnet50(width=8, method="ns", iters=7, eps=1e-3, groups=2).bn1
    assert (dbn.method, dbn.iters, dbn.eps, dbn.groups) == ("ns", 7, 1e-3, 2)
    soc = cifar_resnet18(width=8, stem="soc")
    assert isinstance(soc.conv1, SkewOrthogonalConv2d) and soc.conv1.bias is None
    params = pre_svd_parameters(soc)
    assert len(params) == 1 and params[0] is soc.conv1.weight
    _forward_backward(soc, torch.randn(2, 3, 8, 8), 10)


def test_kaiming_and_bn_init():
    model = cifar_resnet18(width=64)
    w = model.layer1[0].conv1.weight  # fan_out = 64·9
    assert abs(w.std().item() / (2.0 / (64 * 9)) ** 0.5 - 1) < 0.03
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, DecorrelatedBatchNorm2d))]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)


def test_pre_svd_parameters_of_parametrized_weights():
    class Doubled(nn.Module):
        def forward(self, X):
            return 2 * X

    model = cifar_resnet18(width=8)
    parametrize.register_parametrization(model.conv1, "weight", Doubled())
    params = pre_svd_parameters(model)
    assert len(params) == 1 and params[0] is model.conv1.parametrizations.weight.original

    gcp = gcp_resnet18(num_classes=3, width=4, reduced_channels=8, cifar_stem=True)
    ortho.orthogonal(gcp.head.pre_svd)  # geotorch on the flattened (8, 32) matrix
    params = pre_svd_parameters(gcp)
    assert len(params) == 1 and params[0] is gcp.head.pre_svd.parametrizations.weight.original
    _forward_backward(gcp, torch.randn(2, 3, 8, 8), 3)


def test_pre_svd_marking_mechanism():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Linear(4, 4), nn.ReLU())
    assert pre_svd_modules(model) == [] and pre_svd_parameters(model) == []
    model[1].is_pre_svd = True
    assert pre_svd_parameters(model)[0] is model[1].weight
    model[2].is_pre_svd = True  # no weight
    with pytest.raises(ValueError):
        pre_svd_parameters(model)
    with pytest.raises(TypeError):
        pre_svd_modules("model")


def test_meta_layers_capture_in_model():
    model = cifar_resnet18(width=8)
    metas = [m for m in model.modules() if isinstance(m, META_LAYERS)]
    assert metas == [model.bn1]
    model.bn1.capture_covariance = True
    model(torch.randn(2, 3, 8, 8))
    assert model.bn1.captured_covariance.shape == (1, 8, 8)


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="stem"):
        cifar_resnet18(stem="vit")
    with pytest.raises(ValueError, match="head"):
        gcp_resnet18(head="max")
    with pytest.raises(ValueError, match="width"):
        cifar_resnet34(width=0)
    with pytest.raises(ValueError, match="num_classes"):
        gcp_resnet50(num_classes=0)
    with pytest.raises(ValueError, match="method"):
        cifar_resnet18(method="svd")


def test_per_depth_builders_are_the_generic_builder_at_that_depth():
    import inspect

    from orthocond.models import cifar_resnet, cifar_resnet34, gcp_resnet, gcp_resnet101

    torch.manual_seed(0)
    a = cifar_resnet34(10, in_channels=1, width=4)
    torch.manual_seed(0)
    b = cifar_resnet(34, 10, in_channels=1, width=4)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert cifar_resnet34.__name__ == "cifar_resnet34" and "ResNet-34" in cifar_resnet34.__doc__
    assert "depth" not in inspect.signature(gcp_resnet101).parameters
    assert inspect.signature(gcp_resnet101).parameters["num_classes"].default == 1000
    with pytest.raises(ValueError, match=r"depth of a gcp_resnet must be one of \(18, 50, 101\)"):
        gcp_resnet(34)
    with pytest.raises(ValueError, match="depth of a cifar_resnet"):
        cifar_resnet(101)


def test_split_pre_svd_parameters_partitions_the_trainable_parameters():
    from orthocond.ortho import orthogonal, split_pre_svd_parameters

    model = gcp_resnet18(num_classes=5, width=4, reduced_channels=8, cifar_stem=True)
    model.fc.bias.requires_grad_(False)  # frozen parameters belong to neither group
    pre, rest = split_pre_svd_parameters(model)
    assert pre == [model.head.pre_svd.weight]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(pre) + len(rest) == len(trainable)
    assert {id(p) for p in pre + rest} == {id(p) for p in trainable}
    assert all(p is not model.fc.bias for p in rest)
    # a parametrized Pre-SVD weight: the unconstrained tensor the optimizer trains
    orthogonal(model.head.pre_svd)
    pre, rest = split_pre_svd_parameters(model)
    assert pre == [model.head.pre_svd.parametrizations.weight.original]
    assert all(p is not pre[0] for p in rest)
