"""EigenGAN's soft orthogonality loss and the Hessian Penalty."""

from __future__ import annotations

import pytest
import torch

from orthocond.ortho import hessian_penalty, ol_penalty, so_penalty


def test_ol_penalty_is_mean_of_gram_error():
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    W = w.reshape(4, -1)
    expected = ((W @ W.T - torch.eye(4, dtype=torch.float64)) ** 2).mean()
    assert torch.allclose(ol_penalty(w), expected)
    assert torch.allclose(ol_penalty(w), so_penalty(w) / 16)
    tall = torch.randn(6, 2, dtype=torch.float64)  # smaller Gram: W^T W (2 x 2)
    assert torch.allclose(ol_penalty(tall), ((tall.T @ tall - torch.eye(2, dtype=torch.float64)) ** 2).mean())
    assert torch.allclose(ol_penalty([w, tall]), ol_penalty(w) + ol_penalty(tall))
    q = torch.linalg.qr(torch.randn(9, 3, dtype=torch.float64))[0].T
    assert ol_penalty(q).item() == pytest.approx(0.0, abs=1e-24)


def test_ol_penalty_gradcheck_and_bad_input():
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ol_penalty, (w,))
    with pytest.raises(ValueError, match="at least one"):
        ol_penalty([])
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        ol_penalty([torch.randn(3)])


def test_hessian_penalty_known_hessians():
    z = torch.randn(16, 3, dtype=torch.float64)
    # separable (diagonal Hessian): zero up to rounding, for any directions
    sep = hessian_penalty(lambda z: z.square() + z.sin(), z, k=4)
    assert sep.item() < 1e-10
    # G = z0 z1: v^T H v = 2 v0 v1 exactly (central differences are exact for a quadratic);
    # compare with the variance of that formula over the same Rademacher directions
    g = torch.Generator().manual_seed(3)
    hp = hessian_penalty(lambda z: z[:, :1] * z[:, 1:2], z, k=8, generator_rng=g)
    g = torch.Generator().manual_seed(3)
    v = torch.randint(0, 2, (8, *z.shape), generator=g).double() * 2 - 1
    vhv = 2 * v[..., 0] * v[..., 1]  # exact for a quadratic G
    assert hp.item() == pytest.approx(vhv.var(dim=0, unbiased=True).mean().item(), rel=1e-6)


def test_hessian_penalty_reductions_and_gradient():
    lin = torch.nn.Linear(3, 4, dtype=torch.float64)

    def gen(z):
        return torch.tanh(lin(z)) * z[:, :1]

    z = torch.randn(5, 3, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    hmax = hessian_penalty(gen, z, reduction="max", generator_rng=g1)
    hmean = hessian_penalty(gen, z, reduction="mean", generator_rng=g2)
    assert hmax.item() >= hmean.item() > 0
    hmax.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


def test_hessian_penalty_bad_input():
    f = lambda z: z  # noqa: E731
    with pytest.raises(ValueError, match="k must be >= 2"):
        hessian_penalty(f, torch.randn(2, 2), k=1)
    with pytest.raises(ValueError, match="epsilon"):
        hessian_penalty(f, torch.randn(2, 2), epsilon=0.0)
    with pytest.raises(ValueError, match="reduction"):
        hessian_penalty(f, torch.randn(2, 2), reduction="sum")
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        hessian_penalty(f, torch.randn(2))
