"""NOG on the step the optimizer applied (``target="update"``), the spectral scale, and the
agreement of the "svd" and "ns" methods on rank-deficient matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import optim
from orthocond.optim.nog import _orthogonalize


def polar_ref(M: torch.Tensor, cut: float = 1e-12) -> torch.Tensor:
    """float64 U V^T of M flattened to (rows, -1), singular values > cut * sigma_1 only."""
    A = M.detach().reshape(M.shape[0], -1).double().cpu().numpy()
    U, S, Vh = np.linalg.svd(A, full_matrices=False)
    keep = S > cut * S[0]
    return torch.from_numpy(U[:, keep] @ Vh[keep])


def singular_values(M: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(M.detach().reshape(M.shape[0], -1).double())


def make_param(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype))


def grad_for(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def has_fused(cls):
    try:
        opt = cls([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.1, fused=True)
        opt.param_groups[0]["params"][0].grad = torch.ones(2, 2)
        opt.step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


# ------------------------------------------------------------------------ spectral factor


def test_spectral_factor_uses_the_flattened_shape():
    # a conv (C_out, C_in, kh, kw) is (C_out, C_in*kh*kw): 64 x 27, not its last dims 3 x 3
    assert optim.spectral_factor((64, 3, 3, 3)) == pytest.approx(math.sqrt(64 / 27))
    assert optim.spectral_factor((16, 64, 3, 3)) == 1.0  # wide: 16 x 576
    assert optim.spectral_factor((256, 128)) == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="at least 2 dims"):
        optim.spectral_factor((5,))
    with pytest.raises(ValueError, match="non-empty"):
        optim.spectral_factor((0, 3))


@pytest.mark.parametrize("shape", [(64, 3, 3, 3), (16, 8, 3, 3), (40, 10)])
def test_gradient_target_spectral_scale(shape):
    g = grad_for(shape, 1)
    out = optim.nearest_orthogonal_gradient(g, scale="spectral")
    sv = singular_values(out)
    assert torch.allclose(sv, torch.full_like(sv, optim.spectral_factor(shape)), atol=1e-10)


# ---------------------------------------------------------------- update: the direction


def _paired_steps(cls, kwargs, scale, shape=(16, 3, 3, 3), steps=3):
    """(applied step with update-NOG, the bare optimizer's step from the same state) per step.

    The reference optimizer sees the same gradients and, before each step, the NOG weight:
    update-NOG changes the weight only, never the optimizer's state, so both states agree.
    """
    p = make_param(shape)
    ref = torch.nn.Parameter(p.detach().clone())
    opt, ref_opt = cls([p], **kwargs), cls([ref], **kwargs)
    nog = optim.NOG(opt, [p], target="update", scale=scale)
    out = []
    for k in range(steps):
        with torch.no_grad():
            ref.copy_(p)
        p.grad = grad_for(shape, 10 + k)
        ref.grad = p.grad.clone()
        w0 = p.detach().clone()
        opt.step()
        ref_opt.step()
        out.append((p.detach() - w0, ref.detach() - w0))
    nog.remove()
    return out


BASES = [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-2)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-1, foreach=True)),
    (torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5)),
]


@pytest.mark.parametrize("cls,kwargs", BASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_update_direction_is_polar_of_the_bare_step(cls, kwargs):
    lr = kwargs["lr"]
    for applied, bare in _paired_steps(cls, kwargs, "none"):
        expected = lr * polar_ref(bare)
        assert torch.allclose(applied.reshape(expected.shape), expected, atol=1e-12)
        # every singular value of the applied step equals the lr
        assert torch.allclose(singular_values(applied), torch.full((16,), lr, dtype=torch.float64))


@pytest.mark.parametrize("cls,kwargs", BASES[:3], ids=lambda x: getattr(x, "__name__", str(x)))
def test_update_grad_scale_keeps_the_step_length(cls, kwargs):
    for applied, bare in _paired_steps(cls, kwargs, "grad"):
        assert applied.norm().item() == pytest.approx(bare.norm().item(), rel=1e-12)
        direction = polar_ref(bare)
        assert torch.allclose(
            applied.reshape(direction.shape) / applied.norm(), direction / direction.norm(), atol=1e-12
        )


@pytest.mark.parametrize("shape", [(64, 3, 3, 3), (8, 16, 3, 3)])
def test_update_spectral_scale_uses_the_flattened_shape(shape):
    lr = 0.05
    for applied, bare in _paired_steps(torch.optim.SGD, dict(lr=lr, momentum=0.9), "spectral", shape):
        sv = singular_values(applied)
        want = lr * optim.spectral_factor(shape)
        assert torch.allclose(sv, torch.full_like(sv, want), atol=1e-12)
        assert torch.allclose(applied.reshape(shape[0], -1), want * polar_ref(bare), atol=1e-12)


def test_adam_update_nog_steps_of_a_latent_by_rest_weight_have_equal_singular_values():
    # a generator weight (latent, C, kh, kw) flattened to (latent, C*kh*kw): every step
    # Adam applies (its per-coordinate scaling makes the raw step far from orthogonal) is
    # turned into lr times a matrix with orthonormal rows
    latent, lr = 8, 1e-3
    W = make_param((latent, 4, 3, 3), torch.float64, seed=3)
    opt = torch.optim.Adam([W], lr=lr)
    optim.NOG(opt, [W], target="update")
    target = torch.randn(latent, 4, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        ((W - target) ** 3).sum().backward()
        w0 = W.detach().clone()
        opt.step()
        sv = singular_values(W.detach() - w0)
        assert sv.shape == (latent,)
        assert torch.allclose(sv, torch.full_like(sv, lr), rtol=1e-9)


# ------------------------------------------------------------ update: optimizer plumbing


OPTIMIZERS = [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=True)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, foreach=False)),
    (torch.optim.Adam, dict(lr=1e-2, foreach=False)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2, foreach=True)),
    (torch.optim.RMSprop, dict(lr=1e-2)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, fused=True)),
    (torch.optim.Adam, dict(lr=1e-2, fused=True)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2, fused=True)),
]


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS, ids=lambda x: str(x))
def test_update_target_with_torch_optimizers_leaves_other_params_alone(cls, kwargs):
    if kwargs.get("fused") and not has_fused(cls):
        pytest.skip(f"fused {cls.__name__} not available on CPU")
    a, b = make_param((8, 2, 3, 3), torch.float32), make_param((8, 2, 3, 3), torch.float32, 1)
    ref_a, ref_b = (torch.nn.Parameter(t.detach().clone()) for t in (a, b))
    opt, ref = cls([a, b], **kwargs), cls([ref_a, ref_b], **kwargs)
    optim.NOG(opt, [a], target="update", scale="grad")
    for k in range(3):
        with torch.no_grad():
            ref_a.copy_(a)
        a.grad, b.grad = grad_for(a.shape, 30 + k, torch.float32), grad_for(b.shape, 40 + k, torch.float32)
        ref_a.grad, ref_b.grad = a.grad.clone(), b.grad.clone()
        w0 = a.detach().clone()
        opt.step()
        ref.step()
        bare = (ref_a.detach() - w0).double()
        direction = polar_ref(bare) * bare.norm() / math.sqrt(8)
        assert torch.allclose((a.detach() - w0).double().reshape(8, 18), direction, atol=1e-5)
    assert torch.equal(b.detach(), ref_b.detach())


def test_update_zero_step_stays_zero_and_missing_grad_is_skipped():
    p, q = make_param((6, 4)), make_param((6, 4), seed=1)
    opt = torch.optim.SGD([p, q], lr=0.1)
    optim.NOG(opt, [p, q], target="update")
    p.grad = torch.zeros_like(p)  # a zero step: never a random unit step
    w_p, w_q = p.detach().clone(), q.detach().clone()
    opt.step()
    assert torch.equal(p.detach(), w_p) and torch.equal(q.detach(), w_q)


def test_update_nonfinite_step_is_left_as_the_optimizer_made_it():
    p = make_param((6, 4))
    opt = torch.optim.SGD([p], lr=0.1)
    optim.NOG(opt, [p], target="update")
    p.grad = grad_for((6, 4), 2)
    p.grad[1, 1] = float("nan")
    opt.step()
    assert p.detach()[1, 1].isnan() and torch.isfinite(p.detach()[0]).all()


@pytest.mark.parametrize("fused", [False, True])
def test_update_target_with_gradscaler_skipped_step(fused):
    if fused and not has_fused(torch.optim.Adam):
        pytest.skip("fused Adam not available on CPU")
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    except (AttributeError, RuntimeError, TypeError):
        pytest.skip("torch.amp.GradScaler('cpu') is not available")
    p = make_param((6, 10), torch.float32)
    opt = torch.optim.Adam([p], lr=1e-2, fused=fused)
    optim.NOG(opt, [p], target="update")
    gen = torch.Generator().manual_seed(6)
    scaler.scale((p * torch.randn(6, 10, generator=gen)).sum()).backward()
    w0 = p.detach().clone()
    scaler.step(opt)
    scaler.update()
    sv = singular_values(p.detach() - w0)
    # float32 weights of size ~1 moved by 1e-2: the difference carries ~1e-5 relative rounding
    assert torch.allclose(sv, torch.full_like(sv, 1e-2), rtol=1e-3)
    opt.zero_grad()
    scaler.scale((p * torch.randn(6, 10, generator=gen)).sum()).backward()
    with torch.no_grad():
        p.grad[0, 0] = float("inf")
    w1 = p.detach().clone()
    scaler.step(opt)  # overflow: skipped (not called, or the fused kernel skips it)
    scaler.update()
    assert torch.equal(p.detach(), w1)


@pytest.mark.parametrize("as_kwarg", [False, True])
def test_update_target_with_a_closure(as_kwarg):
    W = make_param((5, 7))
    x = torch.randn(7, 11, dtype=torch.float64)
    opt = torch.optim.SGD([W], lr=0.05, momentum=0.9)
    optim.NOG(opt, [W], target="update")

    def closure():
        opt.zero_grad()
        loss = (W @ x).square().mean()
        loss.backward()
        return loss

    w0 = W.detach().clone()
    loss = opt.step(closure=closure) if as_kwarg else opt.step(closure)
    assert torch.isfinite(loss)
    assert torch.allclose(singular_values(W.detach() - w0), torch.full((5,), 0.05, dtype=torch.float64))


def test_update_target_uses_each_groups_lr_and_batches_same_shapes():
    a, b, c = make_param((6, 4)), make_param((6, 4), seed=1), make_param((3, 9), seed=2)
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b, c], "lr": 0.02}], momentum=0.5)
    optim.NOG(opt, [a, b, c], target="update")
    for p, s in zip((a, b, c), (1, 2, 3)):
        p.grad = grad_for(p.shape, s)
    before = [p.detach().clone() for p in (a, b, c)]
    opt.step()
    for p, w0, lr in zip((a, b, c), before, (0.1, 0.02, 0.02)):
        sv = singular_values(p.detach() - w0)
        assert torch.allclose(sv, torch.full_like(sv, lr), atol=1e-12)


def test_update_target_remove_and_repr():
    p = make_param((6, 4))
    opt = torch.optim.SGD([p], lr=0.1)
    nog = optim.NOG(opt, [p], target="update", scale="spectral")
    assert "target='update'" in repr(nog) and "scale='spectral'" in repr(nog)
    nog.remove()
    nog.remove()
    p.grad = grad_for((6, 4), 5)
    w0 = p.detach().clone()
    opt.step()
    assert torch.allclose(p.detach(), w0 - 0.1 * p.grad)


def test_update_target_bad_input():
    p = make_param((6, 4))
    opt = torch.optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="target must be one of 'gradient', 'update'"):
        optim.NOG(opt, [p], target="step")
    with pytest.raises(ValueError, match="scale must be one of 'none', 'grad', 'spectral'"):
        optim.NOG(opt, [p], target="update", scale="unit")


# ------------------------------------------------------------- torch.optim.Muon reference


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_update_nog_matches_torch_muon_up_to_its_newton_schulz_error():
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _zeropower_via_newtonschulz

    shape, lr, mu = (64, 48), 0.02, 0.95
    W = make_param(shape, torch.float32, seed=5)
    V = torch.nn.Parameter(W.detach().clone())
    muon = torch.optim.Muon([V], lr=lr, weight_decay=0.0, momentum=mu, nesterov=True)
    sgd = torch.optim.SGD([W], lr=lr, momentum=mu, nesterov=True)
    optim.NOG(sgd, [W], target="update", scale="spectral")
    buf = torch.zeros(shape, dtype=torch.float64)
    for k in range(4):
        with torch.no_grad():
            V.copy_(W)
        g = grad_for(shape, 50 + k, torch.float32)
        W.grad, V.grad = g.clone(), g.clone()
        # the direction both orthogonalise: Nesterov momentum (Muon's EMA is (1 - mu) times
        # SGD's sum, the same direction)
        buf = mu * buf + g.double()
        nesterov = g.double() + mu * buf
        ns_error = (
            torch.linalg.matrix_norm(
                _zeropower_via_newtonschulz(nesterov.float(), (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, EPS).double()
                - polar_ref(nesterov)
            )
            / math.sqrt(min(shape))
        ).item()
        w0 = W.detach().clone()
        sgd.step()
        muon.step()
        ours, theirs = (W.detach() - w0).double(), (V.detach() - w0).double()
        scale = lr * optim.spectral_factor(shape)  # Muon's "original" rule, same factor
        assert torch.allclose(ours, -scale * polar_ref(nesterov), atol=1e-6)
        gap = (torch.linalg.matrix_norm(ours - theirs) / torch.linalg.matrix_norm(ours)).item()
        assert 0.05 < ns_error < 0.5  # the measured error of Muon's 5-step iteration
        assert gap <= 1.05 * ns_error + 1e-3


# ---------------------------------------------------- "svd" and "ns" on rank-deficient input


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rank", [1, 5, 27])
def test_svd_and_ns_agree_on_rank_deficient_gradients(dtype, rank):
    # exact rank k in float64, then rounded: "svd" cuts the numerically zero singular values
    # (||R||_F = sqrt(k), as "ns" gives), so switching the method never changes the step size
    gen = torch.Generator().manual_seed(rank)
    G = torch.randn(64, rank, generator=gen, dtype=torch.float64) @ torch.randn(
        rank, 27, generator=gen, dtype=torch.float64
    )
    ref = polar_ref(G)
    for method, tol in (("svd", 1e-5), ("ns", 1e-2)):
        R = optim.nearest_orthogonal_gradient(G.to(dtype), method=method).double()
        assert torch.linalg.matrix_norm(R).item() == pytest.approx(math.sqrt(rank), rel=tol)
        rel = (torch.linalg.matrix_norm(R - ref) / math.sqrt(rank)).item()
        assert rel < (tol if dtype == torch.float32 or method == "ns" else 1e-10)


def test_nog_optimizer_step_size_is_the_same_for_svd_and_ns_on_a_rank_one_gradient():
    steps = {}
    for method in ("svd", "ns"):
        p = make_param((64, 3, 3, 3), torch.float32)
        opt = torch.optim.SGD([p], lr=0.1)
        optim.NOG(opt, [p], method=method)
        u, v = grad_for((64, 1), 1, torch.float32), grad_for((1, 27), 2, torch.float32)
        p.grad = (u @ v).reshape(p.shape)
        w0 = p.detach().clone()
        opt.step()
        steps[method] = (w0 - p.detach()).reshape(64, 27)
    assert steps["svd"].norm().item() == pytest.approx(0.1, rel=1e-5)  # not 0.1 * sqrt(27)
    # "ns" maps the rounding-noise singular values (~1e-7 sigma_1) to <~1e-3, not exactly 0
    assert steps["ns"].norm().item() == pytest.approx(0.1, rel=1e-2)
    assert (steps["svd"] - steps["ns"]).norm().item() < 1e-2 * 0.1


def test_batched_core_cpu_fast_path_matches_the_masked_path():
    # the CPU fast path (no invalid matrix) and the masked path (a zero matrix in the batch)
    # give the same polar factors, tall and wide, with and without the rank cut
    gen = torch.Generator().manual_seed(0)
    for shape in ((12, 5), (5, 12)):
        A = torch.randn(3, *shape, generator=gen)
        A[1] = A[1, :, :1] @ A[1, :1, :]  # rank one
        fast = _orthogonalize(A, "svd", None, "none", None)
        masked = _orthogonalize(torch.cat([A, torch.zeros(1, *shape)]), "svd", None, "none", None)
        assert torch.allclose(fast, masked[:3], atol=1e-6)
        assert torch.equal(masked[3], torch.zeros(shape))
        for i in range(3):
            # float32 rounding noise of the rank-one matrix (~1e-7 sigma_1) is cut too
            assert torch.allclose(fast[i].double(), polar_ref(A[i], cut=1e-5), atol=2e-5)


@pytest.mark.parametrize("kappa", [1.0, 1e2, 1e4])
@pytest.mark.parametrize("shape", [(64, 27), (27, 64), (64, 576)])
def test_float32_polar_is_as_accurate_as_float64_of_the_same_input(shape, kappa):
    # narrow float32 matrices take the float64 Gram path, wider ones the tall SVD: both must
    # stay at float32 rounding of the float64 polar factor of the same float32 input
    gen = torch.Generator().manual_seed(int(kappa))
    m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    S = torch.logspace(0, -math.log10(kappa), k, dtype=torch.float64)
    G = ((U * S) @ V.T).float()
    R = optim.nearest_orthogonal_gradient(G).double()
    ref = polar_ref(G)
    err = (torch.linalg.matrix_norm(R - ref) / math.sqrt(k)).item()
    assert err < 1e-6 * max(1.0, kappa / 10)
