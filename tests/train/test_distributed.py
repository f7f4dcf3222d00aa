"""Distributed training on CPU with the gloo backend: 2 processes (torch.multiprocessing.spawn).

One spawn per module (a module-scoped fixture) runs every scenario; the tests compare what the
ranks saved with a single-process run on the concatenated batch:

- ``SyncDecorrelatedBatchNorm2d`` forward, input gradient, parameter gradients and running
  statistics (uneven split 2 + 4 samples) equal ``DecorrelatedBatchNorm2d`` on the whole batch.
- DDP on a tiny model with NOG + OLR on its Pre-SVD conv (plain model, and with its decorrelated
  BN converted by ``convert_sync_decorrelated_batchnorm``): parameters identical on every rank and
  equal to the single-process run after 3 SGD steps (momentum, weight decay); and with Adam,
  the update-target NOG (spectral scale) and OLR(mode="update").

Never hangs: the process group has a 60 s timeout, the parent waits at most 180 s and then
terminates the workers. Skipped where gloo is unavailable.
"""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import optim
from orthocond.nn import DecorrelatedBatchNorm1d, DecorrelatedBatchNorm2d
from orthocond.nn.sync_whitening import (
    SyncDecorrelatedBatchNorm1d,
    SyncDecorrelatedBatchNorm2d,
    convert_sync_decorrelated_batchnorm,
)

WORLD = 2
STEPS = 3
SPLIT = (2, 4)  # uneven local batches of the sync-whitening check
DDP_BATCH = 4  # per rank

gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo unavailable"
)


# ---------------------------------------------------------------------------------------------
# shared set-up (used by the workers and by the single-process references)
# ---------------------------------------------------------------------------------------------
def _whitening_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sum(SPLIT), 6, 3, 3, generator=g, dtype=torch.float64)
    x = x + 0.5 * x[:, :1]  # correlated channels
    upstream = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x, upstream


def _whitening_layer(cls):
    layer = cls(6, groups=2, eps=1e-3, momentum=0.3).double()
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, 6))
        layer.bias.copy_(torch.linspace(-0.2, 0.3, 6))
    return layer


def _model(with_dbn: bool) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    conv.is_pre_svd = True
    norm = DecorrelatedBatchNorm2d(4, eps=1e-3) if with_dbn else nn.Identity()
    head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return nn.Sequential(conv, norm, head).double()


def _batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(WORLD * DDP_BATCH, 3, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (WORLD * DDP_BATCH,), generator=g)
    return x, y


def _train(
    model: nn.Module, pre_svd: nn.Parameter, rank: int | None, target: str = "gradient"
) -> list[list[float]]:
    """3 SGD steps with NOG + OLR on ``pre_svd``; ``rank`` None = the whole batch.
    ``target="update"``: Adam with the update-target NOG and OLR instead."""
    others = [p for p in model.parameters() if p is not pre_svd]
    groups = [{"params": others}, {"params": [pre_svd]}]
    if target == "update":
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=0.1, weight_decay=5e-4)
        optim.NOG(opt, [pre_svd], target="update", scale="spectral")
        olr = optim.OLR(opt, [pre_svd], mode="update")
    else:
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=5e-4)
        optim.NOG(opt, [pre_svd])
        olr = optim.OLR(opt, [pre_svd])
    lrs = []
    for step in range(STEPS):
        x, y = _batch(step)
        if rank is not None:
            x, y = x[rank * DDP_BATCH : (rank + 1) * DDP_BATCH], y[rank * DDP_BATCH : (rank + 1) * DDP_BATCH]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        lrs.append(list(olr.last_lr))
    return lrs


# ---------------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------------
def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        out: dict = {}
        # 1. synchronised whitening, uneven local batches
        x, upstream = _whitening_inputs()
        lo = sum(SPLIT[:rank])
        xl = x[lo : lo + SPLIT[rank]].clone().requires_grad_(True)
        layer = _whitening_layer(SyncDecorrelatedBatchNorm2d)
        y = layer(xl)
        (y * upstream[lo : lo + SPLIT[rank]]).sum().backward()
        grads = torch.cat([layer.weight.grad, layer.bias.grad])
        dist.all_reduce(grads)
        out["sync"] = {
            "y": y.detach(),
            "x_grad": xl.grad,
            "param_grad": grads,
            "running_mean": layer.running_mean.clone(),
            "running_cov": layer.running_cov.clone(),
        }
        layer.eval()
        out["sync"]["eval"] = layer(x).detach()

        # 2. DDP + NOG + OLR, plain model and with synchronised decorrelated BN
        for name, with_dbn in (("ddp_plain", False), ("ddp_dbn", True), ("ddp_update", False)):
            model = _model(with_dbn)
            if with_dbn:
                model = convert_sync_decorrelated_batchnorm(model)
                assert isinstance(model[1], SyncDecorrelatedBatchNorm2d)
            ddp = nn.parallel.DistributedDataParallel(model)
            target = "update" if name == "ddp_update" else "gradient"
            lrs = _train(ddp, model[0].weight, rank, target)
            out[name] = {
                "params": [p.detach().clone() for p in model.parameters()],
                "buffers": [b.clone() for b in model.buffers()],
                "lrs": lrs,
            }
        torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(outdir: str, deadline_s: float = 180.0) -> None:
    import torch.multiprocessing as mp

    ctx = mp.spawn(_worker, args=(WORLD, _free_port(), outdir), nprocs=WORLD, join=False)
    end = time.monotonic() + deadline_s
    while not ctx.join(timeout=max(1.0, end - time.monotonic())):
        if time.monotonic() >= end:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"distributed workers did not finish within {deadline_s} s")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    outdir = str(tmp_path_factory.mktemp("dist"))
    _spawn(outdir)
    return [torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in range(WORLD)]


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
@gloo
def test_sync_whitening_equals_single_process_on_concatenated_batch(ranks):
    x, upstream = _whitening_inputs()
    ref = _whitening_layer(DecorrelatedBatchNorm2d)
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    (y * upstream).sum().backward()
    parts = [r["sync"] for r in ranks]
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-10, atol=1e-10)
    # Gradient flows through the all-reduced statistics: each rank gets its slice of the
    # whole-batch gradient, including the other rank's loss.
    torch.testing.assert_close(torch.cat([p["x_grad"] for p in parts]), xr.grad, rtol=1e-9, atol=1e-10)
    ref_grads = torch.cat([ref.weight.grad, ref.bias.grad])
    for p in parts:
        torch.testing.assert_close(p["param_grad"], ref_grads, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(p["running_mean"], ref.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(p["running_cov"], ref.running_cov, rtol=1e-12, atol=1e-12)
    ref.eval()
    for p in parts:  # eval mode is the parent's: running statistics, no communication
        torch.testing.assert_close(p["eval"], ref(x).detach(), rtol=1e-10, atol=1e-10)
    # the check is not vacuous: local statistics would whiten differently
    local = _whitening_layer(DecorrelatedBatchNorm2d)(x[: SPLIT[0]]).detach()
    assert (local - parts[0]["y"]).abs().max() > 1e-2


@gloo
@pytest.mark.parametrize("name", ["ddp_plain", "ddp_dbn", "ddp_update"])
def test_ddp_nog_olr_identical_on_ranks_and_equal_single_process(ranks, name):
    model = _model(with_dbn=(name == "ddp_dbn"))
    init = [p.detach().clone() for p in model.parameters()]
    target = "update" if name == "ddp_update" else "gradient"
    lrs = _train(model, model[0].weight, None, target)
    for r in range(1, WORLD):
        for a, b in zip(ranks[0][name]["params"], ranks[r][name]["params"]):
            assert torch.equal(a, b), "parameters differ between ranks"
    for got, want, start in zip(ranks[0][name]["params"], model.parameters(), init):
        torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-11)
        assert not torch.equal(want.detach(), start)  # training moved every parameter
    for got, want in zip(ranks[0][name]["buffers"], model.buffers()):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    # OLR ran on the all-reduced (then orthogonalised) gradient: same lr as one process.
    for r in range(WORLD):
        for a, b in zip(ranks[r][name]["lrs"], lrs):
            assert a == pytest.approx(b, rel=1e-9)
    if target == "gradient":
        assert any(lr[0] < 0.1 for lr in lrs), "OLR never lowered the lr: the check is vacuous"


# ---------------------------------------------------------------------------------------------
# without a process group (no spawn)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "parent,sync,shape",
    [
        (DecorrelatedBatchNorm2d, SyncDecorrelatedBatchNorm2d, (5, 6, 3, 2)),
        (DecorrelatedBatchNorm1d, SyncDecorrelatedBatchNorm1d, (7, 6)),
    ],
)
def test_sync_without_process_group_is_exactly_the_parent(parent, sync, shape):
    torch.manual_seed(0)
    a, b = parent(6, groups=3), sync(6, groups=3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(shape, requires_grad=True)
    xb = x.detach().clone().requires_grad_(True)
    ya, yb = a(x), b(xb)
    assert torch.equal(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.equal(x.grad, xb.grad) and torch.equal(a.weight.grad, b.weight.grad)
    assert torch.equal(a.running_cov, b.running_cov)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(xb))


def test_convert_replaces_layers_and_shares_parameters_and_buffers():
    torch.manual_seed(0)
    dbn = DecorrelatedBatchNorm2d(4, groups=2, eps=1e-2, momentum=None, method="ns", iters=7)
    dbn(torch.randn(8, 4, 3, 3))  # non-trivial running statistics
    dbn.eval()
    dbn.capture_covariance = True
    model = nn.Sequential(nn.Conv2d(3, 4, 1), dbn, nn.Sequential(DecorrelatedBatchNorm1d(4)))
    converted = convert_sync_decorrelated_batchnorm(model)
    assert converted is model
    new = model[1]
    assert type(new) is SyncDecorrelatedBatchNorm2d
    assert type(model[2][0]) is SyncDecorrelatedBatchNorm1d
    assert new.weight is dbn.weight and new.bias is dbn.bias
    assert new.running_cov is dbn.running_cov and new.running_mean is dbn.running_mean
    assert new.num_batches_tracked is dbn.num_batches_tracked and int(new.num_batches_tracked) == 1
    assert (new.groups, new.eps, new.momentum, new.method, new.iters) == (2, 1e-2, None, "ns", 7)
    assert not new.training and new.capture_covariance
    x = torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(new(x), dbn(x), rtol=0, atol=0)
    # a single layer comes back as a new object; an already synchronised one is kept
    single = convert_sync_decorrelated_batchnorm(DecorrelatedBatchNorm2d(4))
    assert type(single) is SyncDecorrelatedBatchNorm2d
    assert convert_sync_decorrelated_batchnorm(single) is single


def test_sync_bad_arguments():
    with pytest.raises(TypeError, match="process_group must be None"):
        SyncDecorrelatedBatchNorm2d(4, process_group="world")
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        convert_sync_decorrelated_batchnorm([DecorrelatedBatchNorm2d(4)])
    with pytest.raises(ValueError, match="groups=3 must divide num_features=4"):
        SyncDecorrelatedBatchNorm2d(4, groups=3)
    with pytest.raises(ValueError, match="expects 4 channels"):
        SyncDecorrelatedBatchNorm2d(4)(torch.randn(2, 3, 2, 2))


def test_sync_layers_exported_from_orthocond_nn():
    from orthocond import nn as onn

    assert onn.SyncDecorrelatedBatchNorm2d is SyncDecorrelatedBatchNorm2d
    assert onn.SyncDecorrelatedBatchNorm1d is SyncDecorrelatedBatchNorm1d
    assert onn.convert_sync_decorrelated_batchnorm is convert_sync_decorrelated_batchnorm
    names = {"SyncDecorrelatedBatchNorm1d", "SyncDecorrelatedBatchNorm2d",
             "convert_sync_decorrelated_batchnorm"}
    assert names <= set(onn.__all__)
    assert isinstance(SyncDecorrelatedBatchNorm2d(4), onn.META_LAYERS)
