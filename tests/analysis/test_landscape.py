"""orthocond.analysis.landscape: loss Lipschitzness / gradient predictiveness probes."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orthocond.analysis.landscape import (
    LandscapeProbe,
    LandscapeRecord,
    measure_landscape,
    plot_landscape,
    split_resnet,
)
from orthocond.models import cifar_resnet18, gcp_resnet18
from orthocond.nn import DecorrelatedBatchNorm2d, GlobalCovPool


def _tiny(seed: int = 0):
    """stem: conv + BN + ReLU; rest: conv + BN + ReLU + grouped ZCA + GCP head (its own BN) + fc.
    Every batch-statistics layer we know of is on the rest side."""
    torch.manual_seed(seed)
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    rest = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        DecorrelatedBatchNorm2d(6, groups=2, eps=1e-2),
        GlobalCovPool(6, 4, method="ns", iters=5, eps=1e-4),
        nn.Linear(10, 3),
    )
    stem, rest = stem.double(), rest.double()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    target = torch.randint(0, 3, (5,))
    return stem, rest, x, target


def _by_hand(stem, rest, x, target, etas, sign=1):
    """One fresh copy of the model per evaluation, a Python loop over η."""
    s, r = copy.deepcopy(stem), copy.deepcopy(rest)
    with torch.no_grad():
        y = s(x)
    y0 = y.clone().requires_grad_(True)
    loss0 = F.cross_entropy(copy.deepcopy(r)(y0), target)
    (d,) = torch.autograd.grad(loss0, y0)
    losses, diffs, ratios = [], [], []
    for eta in etas:
        yi = (y + sign * eta * d).requires_grad_(True)
        li = F.cross_entropy(copy.deepcopy(r)(yi), target)
        (gi,) = torch.autograd.grad(li, yi)
        losses.append(li.item())
        diffs.append((gi - d).norm().item())
        ratios.append(diffs[-1] / (eta * d.norm().item()))
    return loss0.item(), d.norm().item(), losses, diffs, ratios


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_against_a_direct_loop_over_eta(sign, chunk_size):
    stem, rest, x, target = _tiny()
    etas = [0.1 + i * (6.0 - 0.1) / 6 for i in range(7)]
    rec = measure_landscape(
        stem, rest, x, target, eta_range=(0.1, 6.0), num_steps=7, sign=sign,
        chunk_size=chunk_size, step=12,
    )  # fmt: skip
    loss0, dnorm, losses, diffs, ratios = _by_hand(stem, rest, x, target, etas, sign)
    assert rec.step == 12
    assert rec.etas == pytest.approx(etas, rel=1e-15)
    assert rec.loss == pytest.approx(loss0, rel=1e-12)
    assert rec.grad_norm == pytest.approx(dnorm, rel=1e-12)
    assert rec.losses == pytest.approx(losses, rel=1e-9, abs=1e-12)
    assert rec.grad_diffs == pytest.approx(diffs, rel=1e-8, abs=1e-12)
    assert rec.loss_band == pytest.approx((min(losses), max(losses)), rel=1e-9)
    assert rec.grad_band == pytest.approx((min(diffs), max(diffs)), rel=1e-8)
    assert rec.beta == pytest.approx(max(ratios), rel=1e-8)
    # the probe is not trivial: the loss moves over the band and the gradient changes
    assert rec.loss_max - rec.loss_min > 1e-3
    assert rec.grad_diff_max > 1e-3 * rec.grad_norm


def test_model_is_left_unchanged():
    stem, rest, x, target = _tiny(1)
    for _ in range(2):  # non-trivial running statistics
        rest(stem(x * 2 + 1))
    rest[1].eval()  # a mixed-mode model: one BN in eval mode, the rest in train mode
    flags = [m.training for m in list(stem.modules()) + list(rest.modules())]
    state = copy.deepcopy({**stem.state_dict(), **{f"r.{k}": v for k, v in rest.state_dict().items()}})
    gcp = rest[4]
    gcp.capture_covariance = True
    sentinel = torch.ones(1)
    gcp.captured_covariance = sentinel
    rng = torch.get_rng_state()
    measure_landscape(stem, rest, x, target, num_steps=5, chunk_size=2)
    after = {**stem.state_dict(), **{f"r.{k}": v for k, v in rest.state_dict().items()}}
    assert after.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(after[k], v), k
    assert [m.training for m in list(stem.modules()) + list(rest.modules())] == flags
    assert all(p.grad is None for p in list(stem.parameters()) + list(rest.parameters()))
    assert gcp.capture_covariance is True and gcp.captured_covariance is sentinel
    assert torch.equal(torch.get_rng_state(), rng)


def test_modes():
    stem, rest, x, target = _tiny(2)
    for _ in range(3):
        rest(stem(x))  # running statistics differ from this batch's statistics
    etas = [0.5, 1.0, 3.0]
    train_rec = measure_landscape(stem, rest, x, target, etas=etas)
    eval_rec = measure_landscape(stem, rest, x, target, etas=etas, mode="eval")
    assert stem.training and rest.training
    assert abs(train_rec.loss - eval_rec.loss) > 1e-6  # batch vs running statistics
    stem.eval()
    rest.eval()
    cur = measure_landscape(stem, rest, x, target, etas=etas)  # mode=None: current (eval)
    one_by_one = measure_landscape(stem, rest, x, target, etas=etas, chunk_size=1)
    assert not stem.training and not rest.training
    assert cur.losses == pytest.approx(eval_rec.losses, rel=1e-12)
    assert cur.grad_diffs == pytest.approx(one_by_one.grad_diffs, rel=1e-10)
    forced = measure_landscape(stem, rest, x, target, etas=etas, mode="train")
    assert forced.losses == pytest.approx(train_rec.losses, rel=1e-10)
    assert not rest.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    stem, rest, x, target = _tiny(4)
    cpu = measure_landscape(stem, rest, x, target, num_steps=5)
    stem, rest = stem.cuda(), rest.cuda()
    rng = torch.cuda.get_rng_state()
    gpu = measure_landscape(stem, rest, x.cuda(), target.cuda(), num_steps=5)
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    assert gpu.losses == pytest.approx(cpu.losses, rel=1e-9)
    assert gpu.grad_diffs == pytest.approx(cpu.grad_diffs, rel=1e-8)


def test_zero_gradient_gives_zero_beta():
    class Flat(nn.Module):
        def forward(self, y):
            return y.flatten(1)[:, :3] * 0.0

    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    rec = measure_landscape(nn.Identity(), Flat(), x, torch.tensor([0, 1, 2, 0]), num_steps=4)
    assert rec.grad_norm == 0.0 and rec.beta == 0.0 and rec.grad_diff_max == 0.0


def test_split_resnet_reproduces_the_model():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    for model in (
        gcp_resnet18(num_classes=4, width=4, reduced_channels=6, cifar_stem=True),
        gcp_resnet18(num_classes=4, width=4, head="gap"),
        cifar_resnet18(num_classes=4, width=8),
    ):
        model.eval()
        stem, rest = split_resnet(model)
        torch.testing.assert_close(rest(stem(x)), model(x), rtol=1e-5, atol=1e-6)
        assert stem[0] is model.conv1 and rest.fc is model.fc  # shared, not copied
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet18(num_classes=4).eval()
    stem, rest = split_resnet(tv)
    torch.testing.assert_close(rest(stem(x)), tv(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lacks"):
        split_resnet(nn.Linear(2, 2))


def test_probe_schedule_history_and_state():
    torch.manual_seed(0)
    model = gcp_resnet18(num_classes=3, width=4, reduced_channels=6, cifar_stem=True)
    probe = LandscapeProbe(model, every=3, num_steps=3, eta_range=(0.1, 1.0))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    got = [probe.maybe_measure(x, y, step=t) for t in range(7)]
    assert [r is not None for r in got] == [t % 3 == 0 for t in range(7)]
    assert [r.step for r in probe.history] == [0, 3, 6]
    # same weights, same batch: same record every time
    assert probe.history[0].losses == pytest.approx(probe.history[2].losses, rel=1e-6)
    state = json.loads(json.dumps(probe.state_dict()))
    other = LandscapeProbe((nn.Identity(), nn.Identity()), every=1)
    other.load_state_dict(state)
    assert other.every == 3 and other.history == probe.history
    assert isinstance(other.history[0], LandscapeRecord)


def test_plot_landscape(tmp_path):
    pytest.importorskip("matplotlib")
    stem, rest, x, target = _tiny(3)
    probe = LandscapeProbe((stem, rest), every=1, num_steps=3)
    for t in range(3):
        probe.measure(x * (1 + 0.1 * t), target, step=10 * t)
    runs = {"GCP": probe.history, "GAP (dicts)": [r.to_dict() for r in probe.history]}
    out = plot_landscape(runs, tmp_path / "sub" / "landscape.png", title="test")
    assert out.exists() and out.stat().st_size > 5000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="non-empty"):
        plot_landscape({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no landscape records"):
        plot_landscape({"a": []}, tmp_path / "x.png")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"mode": "test"}, ValueError, "mode must be"),
        ({"sign": 2}, ValueError, "sign must be"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"etas": [1.0, -0.5]}, ValueError, "etas must be a finite float > 0"),
        ({"etas": []}, ValueError, "etas must not be empty"),
        ({"eta_range": (5.0, 1.0)}, ValueError, "eta_range"),
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"loss_fn": lambda o, t: F.cross_entropy(o, t, reduction="none")}, ValueError, "scalar"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    stem, rest, x, target = _tiny()
    with pytest.raises(exc, match=match):
        measure_landscape(stem, rest, x, target, **kwargs)


def test_bad_probe_arguments():
    stem, rest, _, _ = _tiny()
    with pytest.raises(TypeError, match="unknown options"):
        LandscapeProbe((stem, rest), etamax=3)
    with pytest.raises(ValueError, match="every"):
        LandscapeProbe((stem, rest), every=0)
    with pytest.raises(TypeError, match="rest must be"):
        LandscapeProbe((stem, "rest"))
    with pytest.raises(TypeError, match="x must be"):
        measure_landscape(stem, rest, [1.0], None)
