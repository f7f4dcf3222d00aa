"""OLR on the step the optimizer applied (``mode="update"``) and the gradient modes' warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import optim


def gram_error(W: torch.Tensor) -> float:
    M = W.detach().reshape(W.shape[0], -1).double()
    G = M.T @ M if M.shape[0] >= M.shape[1] else M @ M.T
    return float(((G - torch.eye(G.shape[0], dtype=G.dtype)) ** 2).sum())


def make_param(shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(scale * torch.randn(shape, generator=g, dtype=torch.float64))


def grad_for(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def bare_step(cls, kwargs, params, grads):
    """The step ``cls`` takes from fresh state on copies of ``params`` (no plug-in)."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = cls(copies, **kwargs)
    for c, g in zip(copies, grads):
        c.grad = g.clone()
    opt.step()
    return [c.detach() - p.detach() for c, p in zip(copies, params)]


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (torch.optim.SGD, dict(lr=0.5, momentum=0.9, weight_decay=1e-2)),
        (torch.optim.Adam, dict(lr=0.3)),
        (torch.optim.RMSprop, dict(lr=0.05)),
    ],
    ids=["sgd-momentum", "adam", "rmsprop"],
)
@pytest.mark.parametrize("shapes", [[(12, 5)], [(4, 3, 3, 3)], [(6, 9), (9, 6)]], ids=str)
def test_alpha_matches_a_fine_grid_search(cls, kwargs, shapes):
    # near-orthogonal weights and large steps, so that alpha* is interior in many cases
    params = []
    for i, shape in enumerate(shapes):
        q, _ = torch.linalg.qr(grad_for((max(shape[0], int(np.prod(shape[1:]))),) * 2, 7 + i))
        m, n = shape[0], int(np.prod(shape[1:]))
        params.append(torch.nn.Parameter((q[:m, :n] * 1.3).reshape(shape).contiguous()))
    grads = [grad_for(p.shape, 20 + i) for i, p in enumerate(params)]
    D = bare_step(cls, kwargs, params, grads)
    before = [p.detach().clone() for p in params]
    opt = cls([{"params": params}], **kwargs)
    olr = optim.OLR(opt, params, mode="update")
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    alpha = olr.last_eta[0]
    assert 0.0 <= alpha <= 1.0
    assert olr.last_lr[0] == pytest.approx(alpha * kwargs["lr"], rel=1e-12)
    for p, b, d in zip(params, before, D):
        assert torch.allclose(p.detach(), b + alpha * d, atol=1e-12)
    grid = np.linspace(0.0, 1.0, 100_001)
    f = [sum(gram_error(b + a * d) for b, d in zip(before, D)) for a in (alpha,)]
    values = np.array([sum(gram_error(b + a * d) for b, d in zip(before, D)) for a in grid[::100]])
    best = grid[::100][values.argmin()]
    fine = grid[(grid >= best - 1e-3) & (grid <= best + 1e-3)]
    fine_values = [sum(gram_error(b + a * d) for b, d in zip(before, D)) for a in fine]
    assert f[0] <= min(fine_values) + 1e-9
    assert abs(alpha - fine[int(np.argmin(fine_values))]) <= 2e-5


def test_update_mode_after_update_nog_scales_the_orthogonalised_step():
    # W = 0.5 Q and a gradient along -Q: NOG's step is lr * Q (lr = 1), and the most
    # orthogonal point on W + alpha * Q is alpha* = 0.5 exactly
    q, _ = torch.linalg.qr(grad_for((10, 4), 3))
    W = torch.nn.Parameter(0.5 * q)
    opt = torch.optim.SGD([W], lr=1.0, momentum=0.9)
    optim.NOG(opt, [W], target="update")
    olr = optim.OLR(opt, [W], mode="update")
    W.grad = -3.0 * q
    w0 = W.detach().clone()
    opt.step()
    assert olr.last_eta[0] == pytest.approx(0.5, abs=1e-9)
    assert olr.last_lr[0] == pytest.approx(0.5, abs=1e-9)
    assert torch.allclose(W.detach(), q, atol=1e-9)
    assert torch.allclose(torch.linalg.svdvals(W.detach() - w0), torch.full((4,), 0.5, dtype=torch.float64))


def test_update_mode_never_worsens_orthogonality_and_restores_nothing():
    W = make_param((8, 8), scale=1.0)
    opt = torch.optim.SGD([W], lr=0.1, momentum=0.9)
    olr = optim.OLR(opt, [W], mode="update")
    for k in range(5):
        W.grad = grad_for((8, 8), k)
        before = gram_error(W)
        opt.step()
        assert gram_error(W) <= before + 1e-12  # alpha = 0 is always a candidate
        assert opt.param_groups[0]["lr"] == 0.1
    assert len(olr.last_lr) == 1


def test_update_mode_zero_and_skipped_steps():
    W = make_param((6, 4))
    opt = torch.optim.SGD([W], lr=0.1)
    olr = optim.OLR(opt, [W], mode="update")
    W.grad = torch.zeros_like(W)
    w0 = W.detach().clone()
    opt.step()
    assert torch.equal(W.detach(), w0)
    assert olr.last_eta == [1.0] and olr.last_lr == [0.1]  # constant f: the full (zero) step
    W.grad = grad_for((6, 4), 1)
    W.grad[0, 0] = float("nan")
    opt.step()  # a non-finite step is left as the optimizer made it
    assert W.detach()[0, 0].isnan()
    assert np.isnan(olr.last_eta[0]) and olr.last_lr == [0.1]


def test_update_mode_with_closure_and_remove():
    W = make_param((5, 7), scale=0.3)
    x = grad_for((7, 3), 9)
    opt = torch.optim.SGD([W], lr=0.5)
    olr = optim.OLR(opt, [W], mode="update")

    def closure():
        opt.zero_grad()
        loss = (W @ x).square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert olr.last_eta is not None and 0 <= olr.last_eta[0] <= 1
    olr.remove()
    W.grad = grad_for((5, 7), 2)
    w0 = W.detach().clone()
    opt.step()
    assert torch.allclose(W.detach(), w0 - 0.5 * W.grad)


def test_update_mode_needs_matrices_and_own_groups():
    b = torch.nn.Parameter(torch.zeros(4))
    W = make_param((4, 3))
    opt = torch.optim.SGD([{"params": [W]}, {"params": [b]}], lr=0.1)
    with pytest.raises(ValueError, match="mode='update' needs weights with at least 2 dims"):
        optim.OLR(opt, [b], mode="update")
    mixed = torch.optim.SGD([W, b], lr=0.1)
    with pytest.raises(ValueError, match="param group"):
        optim.OLR(mixed, [W], mode="update")
    with pytest.raises(ValueError, match="'paper', 'exact', 'update'"):
        optim.OLR(opt, [W], mode="step")


@pytest.mark.parametrize(
    "cls,kwargs,warns",
    [
        (torch.optim.SGD, dict(lr=0.1), False),
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9), True),
        (torch.optim.SGD, dict(lr=0.1, weight_decay=1e-4), True),
        (torch.optim.Adam, dict(lr=0.1), True),
        (torch.optim.RMSprop, dict(lr=0.1), True),
    ],
)
@pytest.mark.parametrize("mode", ["paper", "exact", "update"])
def test_gradient_modes_warn_unless_plain_sgd(cls, kwargs, warns, mode):
    W = make_param((5, 3))
    opt = cls([W], **kwargs)
    assert optim.is_plain_sgd(opt, opt.param_groups) is not warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optim.OLR(opt, [W], mode=mode)
    hits = [w for w in caught if "plain SGD step" in str(w.message)]
    assert len(hits) == (1 if warns and mode != "update" else 0)


def test_update_mode_accepts_lbfgs_and_scales_its_whole_step():
    # the gradient modes refuse LBFGS (it reads the lr before the closure); the update mode
    # only needs the step, which LBFGS makes inside one optimizer.step
    q = torch.linalg.qr(grad_for((6, 3), 4))[0].contiguous()  # LBFGS views flat gradients
    W = torch.nn.Parameter(0.5 * q)
    opt = torch.optim.LBFGS([W], lr=1.0, max_iter=3)
    with pytest.raises(ValueError, match="LBFGS"):
        optim.OLR(opt, [W], mode="paper")
    olr = optim.OLR(opt, [W], mode="update")
    target = 2.0 * q

    def closure():
        opt.zero_grad()
        loss = (W - target).square().sum()
        loss.backward()
        return loss

    w0 = W.detach().clone()
    opt.step(closure)
    alpha = olr.last_eta[0]
    assert 0.0 <= alpha < 1.0  # the full step overshoots orthogonality (towards 2q)
    assert gram_error(W) <= 1e-6  # alpha* lands on q exactly: W0 + alpha * D is collinear
    assert torch.allclose(W.detach(), q, atol=1e-6) and not torch.equal(W.detach(), w0)
