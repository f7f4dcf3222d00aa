"""Mixed precision: autocast (bfloat16 on CPU) and GradScaler with NOG / OLR.

- Under ``torch.autocast("cpu", torch.bfloat16)`` the meta-layers and matrix functions compute in
  float32 (or float64): their output equals the output without autocast to float32 accuracy
  (a bfloat16 computation would be off by ~1e-2), and they return the input dtype.
- Half-precision inputs (bfloat16, float16) are computed in float32 and returned in their dtype.
- With ``torch.amp.GradScaler("cpu")`` a step whose gradients overflowed is skipped: parameters,
  momentum buffers, the param group lr and OLR's reported lr stay as they were.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import optim
from orthocond import linalg
from orthocond import nn as onn
from orthocond.models import cifar_resnet18, gcp_resnet18, pre_svd_parameters

BF16 = torch.bfloat16


def autocast():
    return torch.autocast("cpu", dtype=BF16)


def _features(dtype=torch.float32, shape=(4, 6, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x = x + 0.7 * x[:, :1]  # correlated channels: the whitening is not trivial
    return x.to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


META_LAYERS = [
    pytest.param(lambda: onn.GlobalCovPool(6, None, method="ns"), id="gcp-ns"),
    pytest.param(lambda: onn.GlobalCovPool(6, None, method="eig"), id="gcp-eig"),
    pytest.param(lambda: onn.GlobalCovPool(6, None, method="mpa", vectorize=False), id="gcp-mpa"),
    pytest.param(lambda: onn.DecorrelatedBatchNorm2d(6, groups=2, eps=1e-3), id="dbn-eig"),
    pytest.param(lambda: onn.DecorrelatedBatchNorm2d(6, method="ns", eps=1e-3), id="dbn-ns"),
    pytest.param(lambda: onn.DecorrelatedBatchNorm2d(6, method="mpa", eps=1e-3), id="dbn-mpa"),
]


@pytest.mark.parametrize("make", META_LAYERS)
def test_meta_layers_compute_in_float32_under_autocast(make):
    layer = make()
    x = _features().requires_grad_(True)
    ref = layer(x)
    (gref,) = torch.autograd.grad(ref.square().sum(), x)
    with autocast():
        out = layer(x)
    # backward outside the context, as PyTorch recommends (backward ops reuse forward dtypes)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert out.dtype == torch.float32 and g.dtype == torch.float32
    assert _rel(out, ref) < 1e-5, "the meta-layer ran in reduced precision under autocast"
    assert _rel(g, gref) < 1e-4
    # The same data rounded to bfloat16 is far off: the check above can tell the difference.
    assert _rel(ref.to(BF16), ref) > 1e-4


@pytest.mark.parametrize("make", META_LAYERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_meta_layers_take_half_input_and_return_it(make, dtype):
    layer = make()
    x16 = _features(dtype).requires_grad_(True)
    with autocast():
        out = layer(x16)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    # The result is the float32 computation on the same (rounded) values, rounded once.
    ref = make()(x16.detach().float())
    assert _rel(out, ref) < 2e-2
    (g,) = torch.autograd.grad(out.float().square().sum(), x16)
    assert g.dtype == dtype and torch.isfinite(g).all()


@pytest.mark.parametrize("fn", [linalg.sqrtm, linalg.inv_sqrtm], ids=["sqrtm", "inv_sqrtm"])
@pytest.mark.parametrize("method", ["eig", "ns", "mpa"])
def test_matrix_functions_ignore_autocast(fn, method):
    C = linalg.covariance(_features().flatten(2)) + 1e-2 * torch.eye(6)
    ref = fn(C, method)
    with autocast():
        out = fn(C, method)
        out16 = fn(C.to(BF16), method)
    assert out.dtype == torch.float32 and out16.dtype == BF16
    assert _rel(out, ref) < 1e-6
    assert _rel(out16, fn(C.to(BF16).float(), method)) < 1e-2


def test_whitening_under_autocast_still_whitens():
    """bfloat16 whitening would leave ~1e-2 correlation; float32 inside autocast leaves ~1e-6."""
    layer = onn.DecorrelatedBatchNorm2d(6, eps=0.0, affine=False)
    x = _features(shape=(16, 6, 6, 6))
    with autocast():
        y = layer(x)
    Y = y.transpose(0, 1).reshape(6, -1)
    cov = linalg.covariance(Y.double())
    assert float((cov - torch.eye(6, dtype=torch.float64)).abs().max()) < 1e-4


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: cifar_resnet18(num_classes=3, width=8), id="cifar_resnet18-dbn"),
        pytest.param(lambda: gcp_resnet18(num_classes=3, width=8, reduced_channels=8,
                                          cifar_stem=True), id="gcp_resnet18"),
    ],
)
def test_models_train_under_autocast(build):
    torch.manual_seed(0)
    model = build()
    captured = []
    for m in model.modules():
        if isinstance(m, onn.META_LAYERS):
            m.register_forward_hook(lambda mod, inp, out: captured.append((inp[0].dtype, out.dtype)))
    x = torch.randn(4, 3, 16, 16)
    with autocast():
        logits = model(x)
        loss = F.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert captured and all(i == o for i, o in captured)  # meta-layers return their input dtype
    assert torch.isfinite(loss)
    for p in model.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()


# ---------------------------------------------------------------------------------------------
# GradScaler: skipped steps
# ---------------------------------------------------------------------------------------------
def _setup(fused: bool = False):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    conv.is_pre_svd = True
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    pre = pre_svd_parameters(model)
    others = [p for p in model.parameters() if p is not pre[0]]
    kwargs = {"fused": True} if fused else {}
    opt = torch.optim.SGD([{"params": others}, {"params": pre}], lr=0.1, momentum=0.9,
                          weight_decay=5e-4, **kwargs)
    nog = optim.NOG(opt, pre)
    olr = optim.OLR(opt, pre)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    return model, opt, nog, olr, scaler


def _loss(model, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 6, 6, generator=g)
    with autocast():
        out = model(x)
    return F.cross_entropy(out.float(), torch.tensor([0, 1, 1, 0]))


def _snapshot(model, opt, olr):
    return (
        [p.detach().clone() for p in model.parameters()],
        {id(p): s["momentum_buffer"].clone() for p, s in opt.state.items()},
        [g["lr"] for g in opt.param_groups],
        list(olr.last_lr),
        list(olr.last_eta),
    )


def _skipped_step_leaves_state(fused: bool, unscale_first: bool):
    model, opt, nog, olr, scaler = _setup(fused)
    scaler.scale(_loss(model, 0)).backward()
    scaler.step(opt)
    scaler.update()
    assert olr.last_lr[0] < 0.1  # OLR acted on the first step
    before = _snapshot(model, opt, olr)
    opt.zero_grad()
    scaler.scale(_loss(model, 1)).backward()
    model[0].weight.grad[0, 0, 0, 0] = float("inf")  # overflow in the Pre-SVD gradient
    if unscale_first:
        scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    after = _snapshot(model, opt, olr)
    assert scaler.get_scale() == 2.0**9  # the overflow was seen: scale halved
    for a, b in zip(before[0], after[0]):
        assert torch.equal(a, b), "a skipped step changed a parameter"
    assert before[1].keys() == after[1].keys()
    for k in before[1]:
        assert torch.equal(before[1][k], after[1][k]), "a skipped step changed a momentum buffer"
    assert after[2] == [0.1, 0.1]  # the scheduled lr is back in every group
    assert before[3:] == after[3:], "OLR reports an lr for a step that never happened"
    assert nog.active and olr.active
    # The next finite step runs normally.
    opt.zero_grad()
    scaler.scale(_loss(model, 2)).backward()
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(before[0][0], model[0].weight.detach())


@pytest.mark.parametrize("unscale_first", [False, True])
def test_grad_scaler_skipped_step_leaves_nog_olr_and_params(unscale_first):
    _skipped_step_leaves_state(fused=False, unscale_first=unscale_first)


def test_grad_scaler_skipped_fused_step_keeps_olr_report():
    _skipped_step_leaves_state(fused=True, unscale_first=False)


def test_grad_scaler_fused_step_skips_parameters_and_buffers():
    """The part of the fused case that works: nothing is updated on an overflowed step."""
    model, opt, nog, olr, scaler = _setup(fused=True)
    scaler.scale(_loss(model, 0)).backward()
    scaler.step(opt)
    scaler.update()
    params, buffers, *_ = _snapshot(model, opt, olr)
    opt.zero_grad()
    scaler.scale(_loss(model, 1)).backward()
    model[0].weight.grad[0, 0, 0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b.detach()) for a, b in zip(params, model.parameters()))
    assert all(torch.equal(buffers[id(p)], s["momentum_buffer"]) for p, s in opt.state.items())
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]


def test_grad_scaler_unscaled_nog_step_is_the_polar_factor():
    """With unscale_ before step, NOG sees the true gradient: the applied step is lr * U V^T."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    opt = torch.optim.SGD([conv.weight], lr=0.1)
    optim.NOG(opt, [conv.weight])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    w0 = conv.weight.detach().clone()
    x = torch.randn(2, 3, 5, 5)
    with autocast():
        loss = conv(x).float().square().mean()
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grad = conv.weight.grad.detach().clone()
    expect = linalg.polar(grad.reshape(4, -1).double()).reshape(grad.shape)
    scaler.step(opt)
    step = (w0 - conv.weight.detach()) / 0.1
    torch.testing.assert_close(step.double(), expect, rtol=1e-5, atol=1e-5)
