"""The shared ZCA core (orthocond/nn/_zca.py): both layouts, exact gradients, one code path."""

from __future__ import annotations

import pytest
import torch

from orthocond.nn import DecorrelatedBatchNorm1d, DecorrelatedBatchNorm2d, _zca, zca_whiten


def _plain_zca(x, groups, weight, bias, eps, mean=None, cov=None):
    """Textbook float64 ZCA per group: (Σ + εI)^{-1/2} (x - μ), affine; eigh for the root."""
    N, C = x.shape[:2]
    c = C // groups
    X = x.transpose(0, 1).reshape(groups, c, -1)
    if mean is None:
        mean = X.mean(-1)
        Xc = X - mean.unsqueeze(-1)
        cov = Xc @ Xc.transpose(-2, -1) / X.shape[-1]
    else:
        mean = mean.reshape(groups, c)
        Xc = X - mean.unsqueeze(-1)
    lam, U = torch.linalg.eigh(cov + eps * torch.eye(c, dtype=x.dtype))
    W = (U * lam.rsqrt().unsqueeze(-2)) @ U.transpose(-2, -1)
    Y = (W @ Xc) * weight.reshape(groups, c, 1) + bias.reshape(groups, c, 1)
    return Y.reshape(C, N, *x.shape[2:]).transpose(0, 1)


@pytest.mark.parametrize("spatial", [(6, 6), (3, 3), ()], ids=["view-layout", "permuted-layout", "1d"])
@pytest.mark.parametrize("groups", [1, 2])
def test_core_matches_textbook_zca_in_both_layouts(spatial, groups):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, *spatial, generator=gen, dtype=torch.float64) + 3.0
    weight = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    positions = 1 if not spatial else spatial[0] * spatial[1]
    grouped = _zca.group_channels(x, groups)
    assert grouped.shape[0] == (5 if positions >= _zca._MIN_POSITIONS else 1)
    y = zca_whiten(x, groups, weight=weight, bias=bias, eps=1e-3)
    torch.testing.assert_close(y, _plain_zca(x, groups, weight, bias, 1e-3), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_zca.ungroup_channels(grouped.contiguous(), x.shape), x)


@pytest.mark.parametrize("spatial", [(6, 6), (2, 3)], ids=["view-layout", "permuted-layout"])
def test_core_gradcheck_train_and_eval_with_affine_and_groups(spatial):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, *spatial, generator=gen, dtype=torch.float64).requires_grad_(True)
    weight = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    bias = torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_(True)
    mean = torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_(True)
    cov = torch.eye(2, dtype=torch.float64).repeat(2, 1, 1) * 1.5

    def train(x, w, b):
        return zca_whiten(x, 2, weight=w, bias=b, eps=1e-2)

    def evaluate(x, w, b, m):
        return zca_whiten(x, 2, running_mean=m, running_cov=cov, weight=w, bias=b,
                          training=False, eps=1e-2)

    assert torch.autograd.gradcheck(train, (x, weight, bias))
    assert torch.autograd.gradcheck(evaluate, (x, weight, bias, mean))
    # eval equals the textbook formula around the running statistics
    torch.testing.assert_close(
        evaluate(x, weight, bias, mean),
        _plain_zca(x, 2, weight, bias, 1e-2, mean=mean, cov=cov), rtol=1e-10, atol=1e-10,
    )


def test_core_gradcheck_with_the_ns_root():
    # ns differentiates through its iterations (exact for its forward); the core around it too
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    layer = DecorrelatedBatchNorm2d(3, method="ns", iters=8, eps=1e-1).double()
    assert torch.autograd.gradcheck(layer, (x.requires_grad_(True),))


def test_layers_and_functional_agree_on_1d_and_2d_inputs():
    gen = torch.Generator().manual_seed(3)
    x2 = torch.randn(40, 6, generator=gen)
    layer = DecorrelatedBatchNorm1d(6, groups=3)
    torch.testing.assert_close(layer(x2), zca_whiten(x2, 3), rtol=1e-6, atol=1e-6)
    x4 = torch.randn(8, 6, 8, 8, generator=gen).contiguous(memory_format=torch.channels_last)
    layer = DecorrelatedBatchNorm2d(6)
    y = layer(x4)
    torch.testing.assert_close(y, zca_whiten(x4), rtol=1e-6, atol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("spatial", [(6, 6), (2, 2)], ids=["view-layout", "permuted-layout"])
@pytest.mark.parametrize("training", [True, False])
def test_inplace_op_on_the_output_keeps_the_gradient(spatial, training):
    """Regression: a view made inside the whitening function broke ``ReLU(inplace=True)``."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, *spatial, generator=gen, dtype=torch.float64, requires_grad=True)
    layer = DecorrelatedBatchNorm2d(6, groups=2, eps=1e-2).double()
    layer(x.detach())  # running statistics for the eval case
    layer.train(training)
    y = torch.relu_(layer(x))
    y.sum().backward()
    expected, = torch.autograd.grad(torch.relu(layer(x)).sum(), x)
    torch.testing.assert_close(x.grad, expected)


def test_whiten_batch_whitens_each_folded_copy_alone_and_leaves_running_stats():
    gen = torch.Generator().manual_seed(5)
    layer = DecorrelatedBatchNorm2d(4, groups=2, eps=1e-3)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    a, b = torch.randn(2, 8, 4, 6, 6, generator=gen)
    before = layer.running_cov.clone()
    y = layer.whiten_batch(torch.cat([a, b], dim=1), copies=2)
    assert torch.equal(layer.running_cov, before) and int(layer.num_batches_tracked) == 0
    torch.testing.assert_close(y[:, :4], layer(a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[:, 4:], layer(b), rtol=1e-5, atol=1e-5)
    layer.eval()
    torch.testing.assert_close(layer.whiten_batch(a), zca_whiten(a, 2, weight=layer.weight,
                               bias=layer.bias, eps=1e-3), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="expects 8 channels"):
        layer.whiten_batch(a, copies=2)
