"""Tests of CayleySGD / CayleyAdam (Stiefel-manifold optimizers)."""

from __future__ import annotations

import copy

import pytest
import torch

import optim
from orthocond.ortho import orthogonality_error


@pytest.fixture
def single_thread():
    """Tiny-matrix loops: intra-op threads only add contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def problem(shape, seed=0, dtype=torch.float32):
    """A weight and a least-squares loss ||W A - B||^2 on its flattened matrix."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape[0], int(torch.tensor(shape[1:]).prod())
    W = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype))
    A = torch.randn(n, 12, generator=g, dtype=torch.float64).to(dtype)
    B = torch.randn(m, 12, generator=g, dtype=torch.float64).to(dtype)

    def loss():
        return (W.reshape(m, n) @ A - B).square().sum()

    return W, loss


@pytest.mark.parametrize("shape", [(8, 2, 3, 3), (20, 6)])
def test_cayley_sgd_stays_orthogonal_1000_steps(shape, single_thread):
    W, loss = problem(shape)
    opt = optim.CayleySGD([W], lr=0.05, momentum=0.9)
    worst, first = 0.0, None
    for k in range(1000):
        opt.zero_grad()
        value = loss()
        value.backward()
        first = value.item() if first is None else first
        opt.step()
        if k % 50 == 49:
            worst = max(worst, orthogonality_error(W).item())
    assert worst < 1e-5
    assert orthogonality_error(W).item() < 1e-5
    assert loss().item() < 0.5 * first


def test_cayley_sgd_single_step_matches_algorithm_float64():
    g = torch.Generator().manual_seed(3)
    n, k = 7, 3
    X = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    W = torch.nn.Parameter(X.T.clone())  # wide weight (3, 7): X = W^T
    opt = optim.CayleySGD([W], lr=0.3, momentum=0.9, s=2, polish=0)
    grads = [torch.randn(k, n, generator=g, dtype=torch.float64) for _ in range(2)]
    M = torch.zeros(n, k, dtype=torch.float64)
    for G in grads:
        W.grad = G.clone()
        opt.step()
        # Li et al. (2020), Algorithm 1, written out independently
        M = 0.9 * M - G.T
        What = M @ X.T - 0.5 * X @ (X.T @ M @ X.T)
        Om = What - What.T
        alpha = min(0.3, 2 * 0.5 / (Om.abs().sum(0).max().item() + 1e-8))
        Y = X + alpha * (Om @ X)  # M <- Omega X before Y0 = X + alpha M
        for _ in range(2):
            Y = X + alpha / 2 * Om @ (X + Y)
        X = Y
        M = Om @ X
        assert torch.allclose(W.detach().T, X, atol=1e-12)
    # the fixed point is the Cayley transform: more iterations converge to it
    X = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    W2 = torch.nn.Parameter(X.T.clone())
    opt2 = optim.CayleySGD([W2], lr=0.01, momentum=0.0, s=60, polish=0)
    W2.grad = grads[0].clone()
    opt2.step()
    M = -grads[0].T
    What = M @ X.T - 0.5 * X @ (X.T @ M @ X.T)
    Om = What - What.T
    alpha = min(0.01, 1.0 / (Om.abs().sum(0).max().item() + 1e-8))
    eye = torch.eye(n, dtype=torch.float64)
    cayley = torch.linalg.solve(eye - alpha / 2 * Om, (eye + alpha / 2 * Om) @ X)
    assert torch.allclose(W2.detach().T, cayley, atol=1e-12)


def test_cayley_first_step_projects_to_nearest_orthogonal():
    W, loss = problem((6, 15), seed=4, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(W.detach(), full_matrices=False)
    opt = optim.CayleySGD([W], lr=1e-12, momentum=0.0)
    loss().backward()
    opt.step()
    assert torch.allclose(W.detach(), U @ Vh, atol=1e-9)
    assert orthogonality_error(W).item() < 1e-12


def test_cayley_non_stiefel_params_match_torch():
    g = torch.Generator().manual_seed(5)
    bias = torch.nn.Parameter(torch.randn(5, generator=g))
    flat = torch.nn.Parameter(torch.randn(4, 4, generator=g))
    ref_bias = torch.nn.Parameter(bias.detach().clone())
    ref_flat = torch.nn.Parameter(flat.detach().clone())
    opt = optim.CayleySGD([{"params": [bias]}, {"params": [flat], "stiefel": False}],
                          lr=0.1, momentum=0.9, weight_decay=1e-2)
    ref = torch.optim.SGD([ref_bias, ref_flat], lr=0.1, momentum=0.9, weight_decay=1e-2)
    adam = optim.CayleyAdam([{"params": [bias], "stiefel": False}], lr=1e-2)
    for _ in range(3):
        for p, q in ((bias, ref_bias), (flat, ref_flat)):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    assert torch.allclose(bias, ref_bias, atol=1e-6) and torch.allclose(flat, ref_flat, atol=1e-6)
    ref_adam_bias = torch.nn.Parameter(bias.detach().clone())
    ref_adam = torch.optim.Adam([ref_adam_bias], lr=1e-2, foreach=False)
    for _ in range(3):
        bias.grad = torch.randn(5, generator=g)
        ref_adam_bias.grad = bias.grad.clone()
        adam.step()
        ref_adam.step()
    assert torch.allclose(bias, ref_adam_bias, atol=1e-6)


def test_cayley_adam_stays_orthogonal_and_descends(single_thread):
    W, loss = problem((8, 24), seed=6)
    opt = optim.CayleyAdam([W], lr=0.05)
    first = None
    for _ in range(300):
        opt.zero_grad()
        value = loss()
        value.backward()
        first = value.item() if first is None else first
        opt.step()
    assert orthogonality_error(W).item() < 1e-5
    assert loss().item() < 0.6 * first


def test_cayley_state_dict_resume_is_exact():
    W, loss = problem((5, 9), seed=7, dtype=torch.float64)
    opt = optim.CayleySGD([W], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        loss().backward()
        opt.step()
    snapshot = W.detach().clone()
    state = copy.deepcopy(opt.state_dict())  # state_dict() aliases the live state
    for _ in range(2):
        opt.zero_grad()
        loss().backward()
        opt.step()
    expected = W.detach().clone()
    with torch.no_grad():
        W.copy_(snapshot)
    opt2 = optim.CayleySGD([W], lr=0.1)
    opt2.load_state_dict(state)
    for _ in range(2):
        opt2.zero_grad()
        loss().backward()
        opt2.step()
    assert torch.allclose(W.detach(), expected, atol=1e-12)


def test_cayley_bad_input():
    p = torch.nn.Parameter(torch.randn(3, 4))
    with pytest.raises(ValueError, match="lr"):
        optim.CayleySGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optim.CayleySGD([p], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="q must"):
        optim.CayleySGD([p], lr=0.1, q=1.0)
    with pytest.raises(ValueError, match="s must"):
        optim.CayleySGD([p], lr=0.1, s=0)
    with pytest.raises(ValueError, match="polish"):
        optim.CayleySGD([p], lr=0.1, polish=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.CayleyAdam([p], betas=(0.9,))
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.CayleyAdam([p], betas=(0.9, 1.5))
    assert isinstance(optim.CayleySGD([p], lr=0.1), torch.optim.Optimizer)


def test_cayley_polish_is_what_keeps_s2_orthogonal(single_thread):
    errors = {}
    for polish in (0, 2):
        W, loss = problem((8, 30), seed=8)
        opt = optim.CayleySGD([W], lr=0.2, momentum=0.9, s=2, polish=polish)
        for _ in range(30):
            opt.zero_grad()
            loss().backward()
            opt.step()
        errors[polish] = orthogonality_error(W).item()
    assert errors[0] > 1e-4  # the paper's s = 2 iteration alone drifts off the manifold
    assert errors[2] < 1e-5


@pytest.mark.parametrize(
    "cls, bad",
    [
        (optim.CayleySGD, {"q": 3.0}),
        (optim.CayleySGD, {"s": 0}),
        (optim.CayleySGD, {"momentum": 1.5}),
        (optim.CayleyAdam, {"betas": (0.9, 1.2)}),
        (optim.CayleyAdam, {"polish": -1}),
    ],
)
def test_group_settings_are_checked_like_the_defaults(cls, bad):
    W = torch.nn.Parameter(torch.randn(4, 8))
    V = torch.nn.Parameter(torch.randn(4, 8))
    with pytest.raises(ValueError, match=f"param group 0: {next(iter(bad))}"):
        cls([{"params": [W], **bad}], lr=0.1)
    opt = cls([W], lr=0.1)
    with pytest.raises(ValueError, match=f"param group 1: {next(iter(bad))}"):
        opt.add_param_group({"params": [V], **bad})
    assert len(opt.param_groups) == 1


def test_a_tensor_lr_is_accepted():
    W = torch.nn.Parameter(torch.randn(4, 8))
    opt = optim.CayleySGD([W], lr=torch.tensor(0.1))
    W.grad = torch.randn_like(W)
    opt.step()
    assert torch.allclose(W @ W.T, torch.eye(4), atol=1e-5)
