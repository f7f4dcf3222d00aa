"""Digit generators and discriminator: shapes, the marked layer NOG/OLR act on, bad input."""

from __future__ import annotations

import inspect

import pytest
import torch

import optim
from orthocond.models import (
    DCGANGenerator,
    Discriminator,
    EigenGenerator,
    SubspaceLayer,
    pre_svd_modules,
    pre_svd_parameters,
)


def test_dcgan_generator_shape_range_and_marked_first_layer():
    torch.manual_seed(0)
    g = DCGANGenerator(latent_dim=12, width=8)
    x = g(torch.randn(5, 12))
    assert x.shape == (5, 1, 28, 28) and bool(((x >= 0) & (x <= 1)).all())
    assert pre_svd_modules(g) == [g.project]
    (w,) = pre_svd_parameters(g)
    assert w is g.project.weight and w.shape == (12, 16, 7, 7)
    # NOG's flattening: row i is everything latent dim i writes
    assert w.reshape(w.shape[0], -1).shape == (12, 16 * 49)
    x.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_dcgan_first_layer_row_i_is_latent_dim_i():
    g = DCGANGenerator(latent_dim=4, width=4).eval()
    z = torch.zeros(1, 4)
    z[0, 2] = 1.0
    out = g.project(z[:, :, None, None])
    assert torch.allclose(out.reshape(-1), g.project.weight[2].reshape(-1))


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_eigen_generator_shapes_and_subspaces(layers):
    torch.manual_seed(0)
    g = EigenGenerator(layers=layers, dims=3, width=4)
    assert g.latent_dim == 3 * layers
    x = g(torch.randn(2, g.latent_dim))
    assert x.shape == (2, 1, 28, 28)
    params = pre_svd_parameters(g)
    assert len(params) == layers and all(p.shape[0] == 3 for p in params)
    assert pre_svd_modules(g) == list(g.subspaces)
    assert [m.shape[1] for m in g.subspaces] == [28 // 2 ** (layers - 1 - i) for i in range(layers)]
    for p in params:  # orthonormal rows at init (EigenGAN)
        assert torch.allclose(p @ p.T, torch.eye(3), atol=1e-5)


def test_subspace_layer_formula():
    layer = SubspaceLayer(2, (1, 2, 2))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
        layer.scale.copy_(torch.tensor([2.0, 3.0]))
        layer.shift.fill_(0.5)
    assert torch.allclose(SubspaceLayer(3, (2, 3, 3)).scale, torch.full((3,), 18**0.5))
    out = layer(torch.tensor([[1.0, -1.0]]))
    assert torch.equal(out, torch.tensor([[[[2.5, 0.5], [0.5, -2.5]]]]))


def test_eigen_generator_each_subspace_reaches_the_image():
    torch.manual_seed(0)
    g = EigenGenerator(layers=3, dims=2, width=4)
    g(torch.randn(4, 6)).square().sum().backward()
    for m in g.subspaces:
        assert m.weight.grad.abs().sum() > 0


def test_discriminator_shape():
    d = Discriminator(width=4)
    assert d(torch.rand(3, 1, 28, 28)).shape == (3,)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_dcgan_pair_at_power_of_two_sizes(size):
    g = DCGANGenerator(latent_dim=6, width=4, out_channels=3, image_size=size)
    x = g(torch.randn(2, 6))
    assert x.shape == (2, 3, size, size)
    assert g.project.weight.shape[:2] == (6, 4 * 2 ** (size.bit_length() - 4))
    assert Discriminator(width=4, in_channels=3, image_size=size)(x).shape == (2,)


def test_bad_input():
    with pytest.raises(ValueError, match=r"z must have shape \(B, 8\)"):
        DCGANGenerator(latent_dim=8, width=4)(torch.randn(2, 7))
    with pytest.raises(TypeError, match="z must have a floating"):
        DCGANGenerator(latent_dim=8, width=4)(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="latent_dim"):
        DCGANGenerator(latent_dim=8.0)
    with pytest.raises(ValueError, match="width"):
        DCGANGenerator(width=0)
    with pytest.raises(ValueError, match="layers"):
        EigenGenerator(layers=4)
    with pytest.raises(ValueError, match="dims"):
        SubspaceLayer(10, (1, 2, 2))
    with pytest.raises(ValueError, match="image_size"):
        DCGANGenerator(image_size=48)
    with pytest.raises(ValueError, match="28, 28"):
        Discriminator(width=4)(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        Discriminator(width=4)(torch.rand(2, 3, 28, 28))


@pytest.mark.skipif(
    "target" not in inspect.signature(optim.NOG).parameters,
    reason="NOG(target='update') has not landed yet",
)
@pytest.mark.parametrize("builder", [lambda: DCGANGenerator(8, 4), lambda: EigenGenerator(2, 4, 4)])
def test_adam_update_nog_steps_have_equal_singular_values(builder):
    torch.manual_seed(0)
    g = builder()
    pre = pre_svd_parameters(g)
    rest = [p for p in g.parameters() if all(p is not q for q in pre)]
    opt = torch.optim.Adam([{"params": rest}, {"params": pre}], lr=2e-4, betas=(0.5, 0.999))
    optim.NOG(opt, pre, target="update")
    for _ in range(3):
        before = [p.detach().clone() for p in pre]
        opt.zero_grad()
        g(torch.randn(8, g.latent_dim)).square().mean().backward()
        opt.step()
        for p, b in zip(pre, before):
            s = torch.linalg.svdvals((p.detach() - b).double().reshape(p.shape[0], -1))
            assert s.min() > 0
            assert torch.allclose(s, s.max().expand_as(s), rtol=1e-3)
