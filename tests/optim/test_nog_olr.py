"""Tests of the optimizer plug-ins: NOG and OLR (Cayley optimizers: test_optim_cayley.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optim
from orthocond.optim.nog import _orthogonalize

DTYPES = [torch.float32, torch.float64]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


def tol(dtype):
    return 2e-5 if dtype == torch.float32 else 1e-10


def polar_ref(G, rtol=None):
    """float64 U V^T of G flattened to (rows, -1) (optionally truncated), numpy SVD."""
    M = G.detach().reshape(G.shape[0], -1).double().cpu().numpy()
    U, S, Vh = np.linalg.svd(M, full_matrices=False)
    if rtol is not None:
        keep = S >= rtol * S[0]
        U, Vh = U[:, keep], Vh[keep]
    return torch.from_numpy(U @ Vh)


def make_param(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype))


def set_grad(p, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    p.grad = (scale * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.device, p.dtype)
    return p.grad.clone()


def has_fused(cls):
    try:
        opt = cls([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.1, fused=True)
        p = opt.param_groups[0]["params"][0]
        p.grad = torch.ones(2, 2)
        opt.step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------- NOG


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (30, 4, 1, 1), (5, 7), (6, 6)])
def test_nog_sgd_step_is_polar_factor(shape, dtype, device):
    p = make_param(shape, dtype, device)
    opt = torch.optim.SGD([p], lr=1.0)
    nog = optim.NOG(opt, [p])
    w0 = p.detach().clone()
    g = set_grad(p)
    opt.step()
    step = (w0 - p.detach()).reshape(shape[0], -1).double().cpu()
    ref = polar_ref(g)
    assert torch.allclose(step, ref, atol=tol(dtype) * 10, rtol=0)
    sv = torch.linalg.svdvals(step)
    assert torch.allclose(sv, torch.ones_like(sv), atol=tol(dtype) * 10)
    # the gradient itself was replaced in place (same tensor object, new values)
    assert torch.allclose(p.grad.reshape(shape[0], -1).double().cpu(), ref, atol=tol(dtype) * 10)
    nog.remove()


def test_nog_leaves_other_params_alone():
    w, other = make_param((6, 10)), make_param((6, 10), seed=3)
    bias = torch.nn.Parameter(torch.zeros(6))
    opt = torch.optim.SGD([w, other, bias], lr=0.5)
    optim.NOG(opt, [w])
    g_other, g_bias = set_grad(other, 4), set_grad(bias, 5)
    set_grad(w, 6)
    o0 = other.detach().clone()
    opt.step()
    assert torch.equal(other.grad, g_other) and torch.equal(bias.grad, g_bias)
    assert torch.allclose(other.detach(), o0 - 0.5 * g_other)
    assert torch.allclose(bias.detach(), -0.5 * g_bias)


def test_nog_remove_restores_plain_step():
    p = make_param((6, 10))
    opt = torch.optim.SGD([p], lr=0.1)
    nog = optim.NOG(opt, p)
    assert nog.active
    nog.remove()
    nog.remove()  # idempotent
    assert not nog.active
    w0 = p.detach().clone()
    g = set_grad(p)
    opt.step()
    assert torch.allclose(p.detach(), w0 - 0.1 * g)
    # after removal an OLR followed by a new NOG would be refused, but not a NOG alone
    optim.NOG(opt, [p])


def test_nog_momentum_and_weight_decay_act_on_orthogonal_gradient():
    p = make_param((8, 12), torch.float64)
    lr, wd, beta = 0.05, 1e-2, 0.9
    opt = torch.optim.SGD([p], lr=lr, momentum=beta, weight_decay=wd)
    optim.NOG(opt, [p])
    W = p.detach().clone()
    buf = None
    for k in range(3):
        g = set_grad(p, seed=10 + k)
        opt.step()
        d = polar_ref(g) + wd * W
        buf = d if buf is None else beta * buf + d
        W = W - lr * buf
        assert torch.allclose(p.detach(), W, atol=1e-12)


def test_nog_zero_nonfinite_and_missing_grads():
    a, b, c, d = (make_param((5, 8), seed=s) for s in range(4))
    opt = torch.optim.SGD([a, b, c, d], lr=1.0)
    optim.NOG(opt, [a, b, c, d])
    a.grad = torch.zeros(5, 8)
    b.grad = torch.randn(5, 8)
    b.grad[1, 2] = float("inf")
    b_grad = b.grad.clone()
    g_c = set_grad(c)
    # d.grad stays None
    d0 = d.detach().clone()
    optim_before = a.detach().clone()
    opt.step()
    assert torch.equal(a.grad, torch.zeros(5, 8)) and torch.equal(a.detach(), optim_before)
    assert torch.equal(b.grad, b_grad)  # left as is (same-shape batch with c and a)
    assert torch.allclose(c.grad.double(), polar_ref(g_c).float().double(), atol=1e-5)
    assert d.grad is None and torch.equal(d.detach(), d0)


def test_nog_batches_same_shapes_without_mixing():
    ps = [make_param((6, 9), seed=s) for s in range(3)] + [make_param((4, 2, 3), seed=9)]
    opt = torch.optim.SGD(ps, lr=1.0)
    optim.NOG(opt, ps)
    grads = [set_grad(p, seed=20 + i, scale=10.0**i) for i, p in enumerate(ps)]
    opt.step()
    for p, g in zip(ps, grads):
        got = p.grad.reshape(p.shape[0], -1).double()
        assert torch.allclose(got, polar_ref(g), atol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nog_rtol_rank_deficient_gradient(dtype):
    gen = torch.Generator().manual_seed(0)
    k, m, n = 3, 12, 20
    G = (torch.randn(m, k, generator=gen, dtype=torch.float64)
         @ torch.randn(k, n, generator=gen, dtype=torch.float64))
    truncated = polar_ref(G, rtol=1e-4)
    out = optim.nearest_orthogonal_gradient(G.to(dtype), rtol=1e-4).double()
    assert torch.allclose(out, truncated, atol=tol(dtype) * 10)
    assert abs(torch.linalg.matrix_norm(out).item() - k**0.5) < 1e-4
    # Without rtol the numerical-rank cut drops the rounding-noise directions too (the
    # published NOG would add min(m, n) - k arbitrary unit directions here).
    full = optim.nearest_orthogonal_gradient(G.to(dtype)).double()
    assert torch.allclose(full, truncated, atol=tol(dtype) * 10)


def test_nog_scale_grad_keeps_gradient_norm():
    p = make_param((16, 3, 3, 3), torch.float64)
    opt = torch.optim.SGD([p], lr=1.0)
    optim.NOG(opt, [p], scale="grad")
    g = set_grad(p, scale=3e-3)
    w0 = p.detach().clone()
    opt.step()
    step = (w0 - p.detach()).reshape(16, 27)
    assert abs(torch.linalg.matrix_norm(step).item() - torch.linalg.matrix_norm(g.reshape(16, 27)).item()) < 1e-12
    ref = polar_ref(g)
    assert torch.allclose(step / torch.linalg.matrix_norm(step), ref / ref.norm(), atol=1e-12)


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_nog_ns_method_close_to_svd_at_any_scale(scale):
    G = torch.randn(16, 27, generator=torch.Generator().manual_seed(2)) * scale
    out = optim.nearest_orthogonal_gradient(G, method="ns").double()
    ref = polar_ref(G)
    assert torch.isfinite(out).all()
    rel = (torch.linalg.matrix_norm(out - ref) / torch.linalg.matrix_norm(ref)).item()
    assert rel < 1e-3


def test_nog_functional_edge_cases():
    g16 = torch.randn(4, 6).to(torch.float16)
    out = optim.nearest_orthogonal_gradient(g16)
    assert out.dtype == torch.float16 and out.shape == (4, 6)
    assert torch.allclose(out.double(), polar_ref(g16.float()), atol=2e-3)
    z = torch.zeros(3, 2, 2, 2)
    assert torch.equal(optim.nearest_orthogonal_gradient(z), z)
    nan = torch.full((3, 4), float("nan"))
    assert optim.nearest_orthogonal_gradient(nan).isnan().all()
    tiny = torch.randn(5, 7, dtype=torch.float64) * 1e-300
    assert torch.allclose(optim.nearest_orthogonal_gradient(tiny), polar_ref(tiny), atol=1e-10)
    huge = torch.randn(5, 7) * 1e37
    out = optim.nearest_orthogonal_gradient(huge, scale="grad")
    assert torch.isfinite(out).all()
    # non-contiguous input (a transposed view)
    base = torch.randn(9, 5, dtype=torch.float64)
    assert torch.allclose(optim.nearest_orthogonal_gradient(base.T), polar_ref(base.T.contiguous()))
    # batched core: one matrix of the batch is zero and stays zero
    G = torch.stack([torch.randn(3, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)])
    R = _orthogonalize(G, "svd", None, "none", None)
    assert torch.equal(R[1], G[1]) and torch.allclose(R[0], polar_ref(G[0]))


def test_nog_channels_last_parameter():
    conv = torch.nn.Conv2d(3, 8, 3, bias=False).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(conv.parameters(), lr=1.0)
    optim.NOG(opt, [conv.weight])
    conv(torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)).square().sum().backward()
    g = conv.weight.grad.clone()
    w0 = conv.weight.detach().clone()
    opt.step()
    assert torch.allclose((w0 - conv.weight.detach()).reshape(8, 27).double(), polar_ref(g), atol=2e-5)


OPTIMIZERS = [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=True)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, foreach=False)),
    (torch.optim.Adam, dict(lr=1e-2, foreach=True)),
    (torch.optim.Adam, dict(lr=1e-2, foreach=False)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2, foreach=True)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, fused=True)),
    (torch.optim.Adam, dict(lr=1e-2, fused=True)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2, fused=True)),
]


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS, ids=lambda x: str(x))
def test_nog_with_torch_optimizers(cls, kwargs):
    if kwargs.get("fused") and not has_fused(cls):
        pytest.skip(f"fused {cls.__name__} not available on CPU")
    a, b = make_param((8, 2, 3, 3)), make_param((8, 2, 3, 3))
    ref_a, ref_b = (torch.nn.Parameter(t.detach().clone()) for t in (a, b))
    opt = cls([a, b], **kwargs)
    ref = cls([ref_a, ref_b], **kwargs)
    optim.NOG(opt, [a])
    for k in range(3):
        ga, gb = set_grad(a, 30 + k), set_grad(b, 40 + k)
        ref_a.grad = polar_ref(ga).reshape(a.shape).float()
        ref_b.grad = gb.clone()
        opt.step()
        ref.step()
    assert torch.allclose(a.detach(), ref_a.detach(), atol=1e-5)
    assert torch.allclose(b.detach(), ref_b.detach(), atol=1e-6)


def _grad_scaler():
    try:
        return torch.amp.GradScaler("cpu", init_scale=2.0**10)
    except (AttributeError, RuntimeError, TypeError):
        pytest.skip("torch.amp.GradScaler('cpu') is not available")


@pytest.mark.parametrize("fused", [False, True])
def test_gradscaler_inf_gradient_skips_step(fused):
    if fused and not has_fused(torch.optim.SGD):
        pytest.skip("fused SGD not available on CPU")
    scaler = _grad_scaler()
    p = make_param((6, 10))
    opt = torch.optim.SGD([{"params": [p]}], lr=10.0, momentum=0.9, fused=fused)
    optim.NOG(opt, [p])
    olr = optim.OLR(opt, [p])
    scaler.scale((p * p.detach()).sum()).backward()  # a finite first step: OLR reports
    scaler.step(opt)
    scaler.update()
    report = (list(olr.last_lr), list(olr.last_eta))
    assert report[0][0] < 10.0
    opt.zero_grad()
    w0 = p.detach().clone()
    loss = (p * torch.randn(6, 10)).sum()
    scaler.scale(loss).backward()
    with torch.no_grad():
        p.grad[2, 3] = float("inf")
    inf_grad = p.grad.clone()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), w0)
    assert scaler.get_scale() == 2.0**9
    assert opt.param_groups[0]["lr"] == 10.0
    assert (list(olr.last_lr), list(olr.last_eta)) == report  # no report for a skipped step
    if fused:  # the hooks ran but left the overflowed gradient as it was
        assert torch.equal(p.grad, inf_grad)
    olr.remove()


@pytest.mark.parametrize("fused", [False, True])
def test_gradscaler_finite_step_is_unscaled_polar_and_olr(fused):
    if fused and not has_fused(torch.optim.SGD):
        pytest.skip("fused SGD not available on CPU")
    scaler = _grad_scaler()
    p = make_param((6, 10))
    opt = torch.optim.SGD([{"params": [p]}], lr=10.0, fused=fused)
    optim.NOG(opt, [p])
    olr = optim.OLR(opt, [p])
    w0 = p.detach().clone().double()
    c = torch.randn(6, 10, generator=torch.Generator().manual_seed(5)) + p.detach()
    scaler.scale((p * c).sum()).backward()
    scaler.step(opt)
    R = polar_ref(c)
    a, b, cc = (w0 * w0).sum(), (R * w0).sum(), (R * R).sum()
    eta = (a * b / (a * cc + 2 * b * b)).item()
    assert eta > 0
    assert olr.last_lr[0] == pytest.approx(eta, rel=1e-5)
    assert torch.allclose(p.detach().double(), w0 - eta * R, atol=1e-5)
    assert opt.param_groups[0]["lr"] == 10.0


def test_nog_bad_input():
    p, bias = make_param((4, 5)), torch.nn.Parameter(torch.zeros(4))
    stranger = make_param((4, 5))
    opt = torch.optim.SGD([p, bias], lr=0.1)
    with pytest.raises(ValueError, match="at least 2 dims"):
        optim.NOG(opt, [bias])
    with pytest.raises(ValueError, match="not one of the optimizer's parameters"):
        optim.NOG(opt, [stranger])
    with pytest.raises(ValueError, match="method must be one of"):
        optim.NOG(opt, [p], method="qr")
    with pytest.raises(ValueError, match="scale must be one of"):
        optim.NOG(opt, [p], scale="unit")
    with pytest.raises(ValueError, match="rtol must be None or a float"):
        optim.NOG(opt, [p], rtol=-0.1)
    with pytest.raises(ValueError, match="rtol needs method='svd'"):
        optim.NOG(opt, [p], method="ns", rtol=1e-3)
    with pytest.raises(ValueError, match="steps"):
        optim.NOG(opt, [p], method="ns", steps=0)
    with pytest.raises(ValueError, match="params is empty"):
        optim.NOG(opt, [])
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        optim.NOG("sgd", [p])
    with pytest.raises(TypeError, match="Module"):
        optim.NOG(opt, torch.nn.Linear(5, 4))
    with pytest.raises(TypeError, match=r"params\[0\] must be a torch.Tensor"):
        optim.NOG(opt, [3.0])
    with pytest.raises(ValueError, match="at least 2 dims"):
        optim.nearest_orthogonal_gradient(torch.ones(3))
    with pytest.raises(TypeError, match="floating"):
        optim.nearest_orthogonal_gradient(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        optim.nearest_orthogonal_gradient([[1.0]])
    assert len(optim.olr._GROUP_HOWTO) > 0  # keep the snippet importable


# ----------------------------------------------------------------------------------------- OLR


def closed_form(ws, gs):
    a = sum((w.double() * w.double()).sum() for w in ws)
    b = sum((g.double() * w.double()).sum() for w, g in zip(ws, gs))
    c = sum((g.double() * g.double()).sum() for g in gs)
    return (a * b / (a * c + 2 * b * b)).item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_olr_uses_closed_form_and_restores_lr(dtype):
    p = make_param((8, 3, 3, 3), dtype)
    opt = torch.optim.SGD([{"params": [p]}], lr=1.0)
    olr = optim.OLR(opt, [p])
    assert olr.last_lr is None
    w0 = p.detach().clone()
    # gradient correlated with the weight so that b = g.w > 0
    g = set_grad(p) + 0.5 * w0
    p.grad = g.clone()
    eta = closed_form([w0], [g])
    assert 0 < eta < 1.0
    opt.step()
    assert olr.last_lr == [pytest.approx(eta, rel=1e-9)]
    assert olr.last_eta == [pytest.approx(eta, rel=1e-9)]
    assert torch.allclose(p.detach(), w0 - eta * g, atol=tol(dtype))
    assert opt.param_groups[0]["lr"] == 1.0
    assert opt.state_dict()["param_groups"][0]["lr"] == 1.0


def test_olr_clips_to_scheduled_lr():
    p = make_param((6, 10), torch.float64)
    opt = torch.optim.SGD([{"params": [p]}], lr=1e-6)
    olr = optim.OLR(opt, [p])
    w0 = p.detach().clone()
    p.grad = w0.clone()  # eta* = a^2 / (a^2 + 2 a^2) = 1/3 > 1e-6
    opt.step()
    assert olr.last_eta[0] == pytest.approx(1 / 3)
    assert olr.last_lr == [1e-6]
    p.grad = -p.detach().clone()  # b < 0 -> eta* < 0 -> scheduled lr
    opt.step()
    assert olr.last_eta[0] == pytest.approx(-1 / 3) and olr.last_lr == [1e-6]
    p.grad = torch.zeros_like(p)  # undefined eta -> scheduled lr, no NaN
    opt.step()
    assert np.isnan(olr.last_eta[0]) and olr.last_lr == [1e-6]
    assert torch.isfinite(p).all()


def test_olr_several_params_share_one_lr_over_concatenation():
    a, b, other = make_param((4, 6), seed=1), make_param((3, 5), seed=2), make_param((5,), seed=3)
    opt = torch.optim.SGD([{"params": [other]}, {"params": [a, b]}], lr=1.0)
    olr = optim.OLR(opt, [a, b])
    a0, b0 = a.detach().clone(), b.detach().clone()
    ga = set_grad(a, 11) + a0
    gb = set_grad(b, 12) + b0
    a.grad, b.grad = ga.clone(), gb.clone()
    set_grad(other, 3)
    eta = closed_form([a0, b0], [ga, gb])
    assert eta != pytest.approx(closed_form([a0], [ga]), rel=1e-3)
    opt.step()
    assert olr.last_lr == [pytest.approx(eta, rel=1e-5)]
    assert torch.allclose(a.detach(), a0 - eta * ga, atol=1e-5)
    assert torch.allclose(b.detach(), b0 - eta * gb, atol=1e-5)
    assert olr.groups == [opt.param_groups[1]]


def test_olr_steplr_schedule_unchanged():
    def run(with_olr):
        p = make_param((6, 10), torch.float64)
        q = make_param((3,), torch.float64)
        opt = torch.optim.SGD([{"params": [q]}, {"params": [p]}], lr=0.5, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
        if with_olr:
            optim.NOG(opt, [p])
            olr = optim.OLR(opt, [p])
        lrs, used = [], []
        for k in range(7):
            set_grad(p, k)
            set_grad(q, 100 + k)
            opt.step()
            sched.step()
            lrs.append([g["lr"] for g in opt.param_groups])
            if with_olr:
                used.append(olr.last_lr[0])
        return lrs, used, sched.get_last_lr()

    base, _, last_base = run(False)
    with_olr, used, last = run(True)
    assert base == with_olr  # exactly: OLR never leaves eta* in group["lr"]
    assert last_base == last
    assert all(u <= 0.5 + 1e-15 for u in used) and any(u < 0.5 for u in used)


@pytest.mark.parametrize("shapes", [[(8, 27)], [(27, 8)], [(6, 2, 3, 3), (5, 5)]])
def test_olr_exact_beats_dense_grid(shapes):
    gen = torch.Generator().manual_seed(len(shapes) + shapes[0][0])
    ws = [torch.linalg.qr(torch.randn(max(s[0], int(np.prod(s[1:]))), min(s[0], int(np.prod(s[1:]))),
                                      generator=gen, dtype=torch.float64))[0] for s in shapes]
    ws = [(w if s[0] >= np.prod(s[1:]) else w.T).reshape(s) * 1.3 for w, s in zip(ws, shapes)]
    gs = [torch.randn(s, generator=gen, dtype=torch.float64) * 0.2 + 0.3 * w for w, s in zip(ws, shapes)]

    def f(eta):
        total = 0.0
        for w, g in zip(ws, gs):
            M = (w - eta * g).reshape(w.shape[0], -1)
            gram = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M
            total += ((gram - torch.eye(gram.shape[0], dtype=gram.dtype)) ** 2).sum().item()
        return total

    coef = optim.orthogonality_quartic(ws, gs)
    for eta in (0.0, 0.37, 1.9):
        assert np.polyval(coef, eta) == pytest.approx(f(eta), rel=1e-10, abs=1e-10)
    lr = 2.0
    eta = optim.olr_exact(ws, gs, lr)
    grid = np.linspace(0.0, lr, 20001)
    best_grid = min(np.polyval(coef, grid))
    assert 0.0 <= eta <= lr
    assert f(eta) <= best_grid + 1e-12
    # the closed-form (paper) candidate is generally not the minimiser
    assert f(eta) <= f(min(max(optim.olr_paper(ws, gs), 0.0), lr)) + 1e-12

    params = [torch.nn.Parameter(w.clone()) for w in ws]
    opt = torch.optim.SGD([{"params": params}], lr=lr)
    olr = optim.OLR(opt, params, mode="exact")
    for p, g in zip(params, gs):
        p.grad = g.clone()
    opt.step()
    assert olr.last_lr[0] == pytest.approx(eta, abs=1e-12)
    for p, w, g in zip(params, ws, gs):
        assert torch.allclose(p.detach(), w - eta * g, atol=1e-12)


def test_olr_exact_degenerate_cases():
    W = 2.0 * torch.eye(3, dtype=torch.float64)
    assert optim.olr_exact([W], [W], 1.0) == pytest.approx(0.5)
    assert optim.olr_exact([W], [W], 0.25) == pytest.approx(0.25)  # clipped to the end
    assert optim.olr_exact([W], [torch.zeros(3, 3, dtype=torch.float64)], 0.1) == 0.1
    Q = torch.eye(4, dtype=torch.float64)
    assert optim.olr_exact([Q], [torch.randn(4, 4, dtype=torch.float64)], 0.1) >= 0.0
    assert optim.olr_exact([Q], [Q * -1.0], 1.0) == 0.0  # any step moves away from I
    with pytest.raises(ValueError, match="lr"):
        optim.olr_exact([Q], [Q], -1.0)


def test_nog_then_olr_composition():
    p = make_param((8, 3, 3, 3), torch.float64)
    opt = torch.optim.SGD([{"params": [p]}], lr=10.0)
    optim.NOG(opt, [p])
    olr = optim.OLR(opt, [p])
    w0 = p.detach().clone()
    g = set_grad(p, 7) + w0
    p.grad = g.clone()
    opt.step()
    R = polar_ref(g).reshape(p.shape)
    eta = closed_form([w0], [R])
    assert (R * R).sum().item() == pytest.approx(8.0)  # c = rank
    assert 0 < eta < 10.0
    assert olr.last_lr == [pytest.approx(eta, rel=1e-12)]
    assert torch.allclose(p.detach(), w0 - eta * R, atol=1e-12)


def test_nog_after_olr_is_refused():
    p = make_param((4, 5))
    opt = torch.optim.SGD([{"params": [p]}], lr=0.1)
    olr = optim.OLR(opt, [p])
    with pytest.raises(ValueError, match="Create NOG first"):
        optim.NOG(opt, [p])
    olr.remove()
    optim.NOG(opt, [p])
    optim.OLR(opt, [p])


def test_olr_remove_state_dict_and_failed_step():
    p = make_param((6, 10), torch.float64)
    opt = torch.optim.SGD([{"params": [p]}], lr=1.0)
    olr = optim.OLR(opt, [p], mode="paper")
    assert olr.state_dict() == {"mode": "paper"}
    olr.load_state_dict({"mode": "exact"})
    assert olr.mode == "exact"
    with pytest.raises(ValueError, match="mode"):
        olr.load_state_dict({"mode": "fast"})
    with pytest.raises(ValueError, match="exactly the key"):
        olr.load_state_dict({"mode": "paper", "lr": 0.1})
    # a step that raises after the pre-hook: the next step restores the scheduled lr first
    p.grad = p.detach().clone()

    def boom():
        raise RuntimeError("closure failed")

    with pytest.raises(RuntimeError, match="closure failed"):
        opt.step(boom)
    assert opt.param_groups[0]["lr"] == 1.0  # a closure that fails: OLR never set eta*

    def boom_hook(optimizer, args, kwargs):
        raise RuntimeError("hook failed")

    handle = opt.register_step_pre_hook(boom_hook)  # runs after OLR's pre-hook
    with pytest.raises(RuntimeError, match="hook failed"):
        opt.step()
    handle.remove()
    assert opt.param_groups[0]["lr"] != 1.0  # eta* still in place: the step never finished
    opt.step()
    assert opt.param_groups[0]["lr"] == 1.0
    olr.remove()
    assert not olr.active
    w0 = p.detach().clone()
    opt.step()
    assert torch.allclose(p.detach(), w0 - 1.0 * p.grad)


def test_olr_survives_optimizer_load_state_dict():
    p = make_param((6, 10), torch.float64)
    opt = torch.optim.SGD([{"params": [p]}], lr=1.0, momentum=0.9)
    olr = optim.OLR(opt, [p])
    p.grad = p.detach().clone()
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"] == 1.0
    opt.load_state_dict(sd)  # new group dicts: OLR looks groups up by index
    opt.step()
    assert opt.param_groups[0]["lr"] == 1.0 and olr.last_lr[0] < 1.0


def test_olr_bad_input():
    p, q = make_param((4, 5)), make_param((4, 5), seed=2)
    bias = torch.nn.Parameter(torch.zeros(4))
    shared = torch.optim.SGD([p, q], lr=0.1)
    with pytest.raises(ValueError, match="own") as info:
        optim.OLR(shared, [p])
    msg = str(info.value)
    assert "param group 0" in msg and "1 other parameter" in msg
    assert "optimizer = torch.optim.SGD(" in msg and "optim.OLR(optimizer, pre_svd)" in msg
    opt = torch.optim.SGD([{"params": [p]}, {"params": [bias]}], lr=0.1)
    with pytest.raises(ValueError, match="mode must be one of"):
        optim.OLR(opt, [p], mode="optimal")
    with pytest.raises(ValueError, match="exact"):
        optim.OLR(opt, [bias], mode="exact")
    with pytest.raises(ValueError, match="not one of the optimizer's parameters"):
        optim.OLR(opt, [q])
    with pytest.raises(TypeError, match="Optimizer"):
        optim.OLR(None, [p])
    optim.OLR(opt, [bias])  # paper mode accepts any shape


# --------------------------------------------------------------------------- integration


def _quadratic(seed: int = 0) -> tuple[torch.nn.Parameter, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(6, 10, generator=g, dtype=torch.float64))
    return W, torch.randn(32, 10, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("as_kwarg", [False, True])
def test_nog_and_olr_act_on_the_gradient_a_closure_computes(as_kwarg):
    W, X = _quadratic()
    opt = torch.optim.SGD([W], lr=1.0)
    optim.NOG(opt, [W])
    olr = optim.OLR(opt, [W])

    def closure():
        opt.zero_grad()
        loss = (X @ W.T).square().mean()
        loss.backward()
        return loss

    w0 = W.detach().clone()
    loss = opt.step(closure=closure) if as_kwarg else opt.step(closure)
    assert torch.is_tensor(loss) and loss.item() > 0
    (eta,), (lr,) = olr.last_eta, olr.last_lr
    assert np.isfinite(eta) and 0 < lr <= 1.0
    # the applied step is lr * U V^T of the closure's gradient: singular values all lr
    step = (w0 - W.detach()) / lr
    np.testing.assert_allclose(torch.linalg.svdvals(step).numpy(), np.ones(6), atol=1e-10)
    assert opt.param_groups[0]["lr"] == 1.0  # scheduled lr restored


def test_nog_inside_lbfgs_closure_and_olr_refuses_lbfgs():
    W, X = _quadratic(1)
    opt = torch.optim.LBFGS([W], lr=0.5, max_iter=3)
    optim.NOG(opt, [W])
    seen = []

    def closure():
        opt.zero_grad()
        loss = (X @ W.T).square().mean()
        loss.backward()
        return loss

    def spy_closure():
        loss = closure()
        seen.append(None)
        return loss

    opt.step(spy_closure)
    # every gradient LBFGS evaluated went through NOG: the last one is orthogonal
    np.testing.assert_allclose(torch.linalg.svdvals(W.grad).numpy(), np.ones(6), atol=1e-10)
    assert len(seen) >= 2
    with pytest.raises(ValueError, match="LBFGS reads its lr before"):
        optim.OLR(opt, [W])


def test_plugins_do_not_keep_the_optimizer_alive():
    import gc
    import weakref

    W, _ = _quadratic()
    opt = torch.optim.SGD([{"params": [W]}], lr=0.1)
    optim.NOG(opt, [W])
    optim.OLR(opt, [W])
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None


def test_a_second_nog_or_olr_on_the_same_parameters_is_refused():
    W, _ = _quadratic()
    opt = torch.optim.SGD([{"params": [W]}], lr=0.1)
    nog = optim.NOG(opt, [W])
    with pytest.raises(ValueError, match="another NOG is already registered .* call .remove"):
        optim.NOG(opt, [W])
    olr = optim.OLR(opt, [W])
    with pytest.raises(ValueError, match="another OLR is already registered .* call .remove"):
        optim.OLR(opt, [W])
    assert len(opt._optimizer_step_pre_hooks) == 2  # the refused ones registered nothing
    olr.remove()
    nog.remove()
    optim.NOG(opt, [W])  # after .remove() a new one is fine
    optim.OLR(opt, [W])


@pytest.mark.parametrize("tensor_lr", [False, True])
def test_olr_leaves_an_lr_loaded_after_a_failed_step_alone(tensor_lr):
    W, X = _quadratic()
    lr = torch.tensor(100.0) if tensor_lr else 100.0  # above eta*, so OLR lowers it
    opt = torch.optim.Adam([{"params": [W]}], lr=lr)
    olr = optim.OLR(opt, [W])
    ckpt = opt.state_dict()
    ckpt["param_groups"][0]["lr"] = torch.tensor(0.01) if tensor_lr else 0.01

    def fail(optimizer, args, kwargs):  # runs after OLR's pre-hook set eta*: step never runs
        raise RuntimeError("out of memory (simulated)")

    (X @ W.T).square().mean().backward()
    handle = opt.register_step_pre_hook(fail)
    with pytest.raises(RuntimeError, match="simulated"):
        opt.step()
    handle.remove()
    assert float(opt.param_groups[0]["lr"]) < 100.0  # eta* left in place by the failed step
    opt.load_state_dict(ckpt)
    opt.zero_grad()
    (X @ W.T).square().mean().backward()
    opt.step()
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.01)
    assert olr.last_lr[0] <= 0.01


def test_olr_follows_the_direction_of_a_maximizing_optimizer():
    W, X = _quadratic(2)
    G = torch.randn_like(W)
    etas = []
    for maximize, grad in ((False, G), (True, -G)):  # the same update w - eta G
        opt = torch.optim.SGD([{"params": [W]}], lr=10.0, maximize=maximize)
        olr = optim.OLR(opt, [W], mode="exact")
        W.grad = grad.clone()
        olr._set_lr(opt)
        etas.append(olr.last_eta[0])
        olr._restore()
        olr.remove()
    assert etas[0] == pytest.approx(etas[1], rel=1e-12)


def test_nog_ns_does_not_synchronise_with_the_device():
    from torch.overrides import TorchFunctionMode

    class CountSyncs(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.hits: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("__bool__", "item", "tolist", "__float__", "__int__"):
                self.hits.append(func.__name__)
            return func(*args, **(kwargs or {}))

    p = torch.nn.Parameter(torch.randn(64, 3, 3, 3))
    q = torch.nn.Parameter(torch.randn(128, 64))
    opt = torch.optim.SGD([p, q], lr=0.1, momentum=0.9)
    nog = optim.NOG(opt, [p, q], method="ns")
    p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
    opt.found_inf = torch.zeros(())  # as GradScaler sets it for a fused optimizer
    with CountSyncs() as mode:
        nog.apply_(None, opt.found_inf)
    assert mode.hits == []
    # an overflow flag on the device leaves every gradient untouched
    before = q.grad.clone()
    nog.apply_(None, torch.ones(()))
    assert torch.equal(q.grad, before)
