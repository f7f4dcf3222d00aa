from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orthocond._io import jsonable
from orthocond.analysis import ConditionMonitor, covariance_condition
from orthocond.models import cifar_resnet18, gcp_resnet18


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Tiny models: thread start-up dominates, and oversubscribed cores make 2 threads crawl.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _np_kappa(cov: np.ndarray, eps: float = 0.0) -> np.ndarray:
    lam = np.linalg.eigvalsh(cov.astype(np.float64)) - eps
    return np.where(lam[..., 0] > 0, lam[..., -1] / np.where(lam[..., 0] > 0, lam[..., 0], 1), np.inf)


def _ortho_err_np(w: np.ndarray) -> float:
    W = w.reshape(w.shape[0], -1).astype(np.float64)
    G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    return float(np.linalg.norm(G - np.eye(G.shape[0])))


# --------------------------------------------------------------------------- functional


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_covariance_condition_matches_numpy(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 6, 40, generator=g, dtype=torch.float64)
    cov = (a @ a.transpose(-1, -2) / 40 + 0.01 * torch.eye(6, dtype=torch.float64)).to(dtype)
    got = covariance_condition(cov, eps=0.01)
    ref = _np_kappa(cov.double().numpy())
    ref_e = _np_kappa(cov.double().numpy(), 0.01)
    assert got["max"] == pytest.approx(ref.max(), rel=1e-9)
    assert got["median"] == pytest.approx(np.median(ref), rel=1e-9)
    assert got["max_noeps"] == pytest.approx(ref_e.max(), rel=1e-9)
    lam = np.linalg.eigvalsh(cov.double().numpy())
    assert got["min_eig"] == pytest.approx(lam[:, 0].min(), rel=1e-9)
    # only the first k matrices
    got2 = covariance_condition(cov, max_matrices=2)
    assert got2["max"] == pytest.approx(ref[:2].max(), rel=1e-9)


def test_covariance_condition_edge_cases():
    assert covariance_condition(torch.eye(4))["max"] == 1.0
    assert covariance_condition(torch.eye(1, dtype=torch.float64)[None])["max"] == 1.0
    assert covariance_condition(torch.zeros(3, 3))["max"] == math.inf
    rank1 = torch.outer(torch.arange(1.0, 4.0), torch.arange(1.0, 4.0))
    assert covariance_condition(rank1)["max"] == math.inf
    # eps covariance of a rank-deficient matrix: finite kappa, infinite kappa(Sigma - eps I)
    c = covariance_condition(rank1 + 1e-2 * torch.eye(3), eps=1e-2)
    assert math.isfinite(c["max"]) and c["max"] == pytest.approx(14.01 / 0.01, rel=1e-4)
    assert c["max_noeps"] == math.inf
    bad = torch.eye(3)
    bad[0, 0] = float("nan")
    assert covariance_condition(bad)["max"] is None
    # non-contiguous input
    big = torch.diag(torch.tensor([4.0, 1.0, 2.0, 8.0]))
    assert covariance_condition(big[::2, ::2])["max"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "arg, kw, exc",
    [(torch.zeros(3), {}, ValueError), (torch.zeros(2, 3), {}, ValueError),
     ("x", {}, ValueError), (torch.eye(2), {"eps": -1.0}, ValueError)],
)
def test_covariance_condition_bad_input(arg, kw, exc):
    with pytest.raises(exc):
        covariance_condition(arg, **kw)


def test_jsonable():
    assert jsonable({"a": [1.0, math.inf, (math.nan, 2)], 3: "x"}) == {
        "a": [1.0, None, [None, 2]], "3": "x"}


# --------------------------------------------------------------------------- monitor


def _dbn(seed=0, width=6):
    torch.manual_seed(seed)
    return cifar_resnet18(10, in_channels=1, width=width)


def _batch(seed, n=16, size=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_monitor_values_against_direct_computation(tmp_path):
    model = _dbn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = ConditionMonitor(model, every=2, jsonl=tmp_path / "live.jsonl")
    assert [n for n, _ in mon.meta_layers] == ["bn1"] and [n for n, _ in mon.pre_svd] == ["conv1"]
    eps = model.bn1.eps
    for t in range(5):
        x, y = _batch(t)
        assert model.bn1.capture_covariance == (t % 2 == 0)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        cov = model.bn1.captured_covariance
        if t % 2:
            assert cov is None  # capture only on recorded steps
            assert mon.step(loss=loss) is None
        else:
            cov = cov.clone()
            assert cov.shape == (1, 6, 6)
            W = model.conv1.weight.detach().numpy().copy()
            gW = model.conv1.weight.grad.detach().numpy().copy()
            gall = math.sqrt(sum(float(p.grad.double().square().sum()) for p in model.parameters()
                                 if p.grad is not None))
            rec = mon.step(loss=loss, lr=0.05)
            lam = np.linalg.eigvalsh(cov[0].double().numpy())
            assert rec["step"] == t and rec["lr"] == 0.05
            assert rec["loss"] == pytest.approx(loss.item(), rel=1e-6)
            assert rec["cond/bn1"] == pytest.approx(lam[-1] / lam[0], rel=1e-9)
            k_noeps = (lam[-1] - eps) / (lam[0] - eps) if lam[0] > eps else math.inf
            assert rec["cond_noeps/bn1"] == pytest.approx(k_noeps, rel=1e-6)
            assert rec["ortho_err/conv1"] == pytest.approx(_ortho_err_np(W), rel=1e-5)
            assert rec["weight_norm/conv1"] == pytest.approx(np.linalg.norm(W), rel=1e-6)
            assert rec["grad_norm/conv1"] == pytest.approx(np.linalg.norm(gW), rel=1e-6)
            assert rec["grad_norm"] == pytest.approx(gall, rel=1e-5)
        opt.step()
    assert [r["step"] for r in mon.history] == [0, 2, 4] and mon.steps == 5
    s = mon.summary()
    conds = [r["cond/bn1"] for r in mon.history]
    assert s["metrics"]["cond/bn1"] == {"first": conds[0], "final": conds[-1],
                                        "min": min(conds), "max": max(conds)}
    assert s["nonfinite_loss"] == 0 and s["records"] == 3
    mon.close()
    assert not model.bn1.capture_covariance
    live = [json.loads(line) for line in (tmp_path / "live.jsonl").read_text().splitlines()]
    assert [r["step"] for r in live] == [0, 2, 4]
    assert live[1]["cond/bn1"] == pytest.approx(conds[1])


def test_monitor_gcp_captures_per_sample_covariances():
    torch.manual_seed(0)
    model = gcp_resnet18(10, in_channels=1, width=4, reduced_channels=8, cifar_stem=True)
    mon = ConditionMonitor(model, every=1, max_matrices=3)
    assert [n for n, _ in mon.meta_layers] == ["head"]
    assert [n for n, _ in mon.pre_svd] == ["head.pre_svd"]
    x, y = _batch(1, n=6, size=16)
    F.cross_entropy(model(x), y).backward()
    cov = model.head.captured_covariance.clone()
    assert cov.shape == (6, 8, 8)
    rec = mon.step()
    ref = _np_kappa(cov[:3].double().numpy())
    assert rec["cond/head"] == pytest.approx(ref.max(), rel=1e-9)
    assert rec["cond_median/head"] == pytest.approx(np.median(ref), rel=1e-9)
    assert rec["loss"] is None


def test_monitor_nonfinite_events():
    model = _dbn()
    mon = ConditionMonitor(model, every=100)
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()
    mon.step(loss=torch.tensor(float("nan")))
    model.fc.weight.grad[0, 0] = float("inf")
    mon.step(loss=1.0)
    assert mon.events == [{"step": 0, "kind": "loss"}, {"step": 1, "kind": "grad"}]
    assert mon.nonfinite_loss == 1 and mon.nonfinite_grad == 1
    assert mon.last_grad_norm == math.inf
    assert mon.summary()["nonfinite_grad"] == 1


def test_monitor_paused_and_state_dict(tmp_path):
    model = _dbn()
    mon = ConditionMonitor(model, every=2)
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()
    train_cov = model.bn1.captured_covariance
    with mon.paused():
        assert not model.bn1.capture_covariance
        model.eval()
        with torch.no_grad():
            model(x)
        model.train()
    assert model.bn1.capture_covariance and model.bn1.captured_covariance is train_cov
    mon.step(loss=2.0)
    mon.step(loss=1.5)
    state = mon.state_dict()
    other = ConditionMonitor(_dbn(1), every=7)
    other.load_state_dict(state)
    assert other.history == mon.history and other.steps == 2 and other.every == 2
    assert other.meta_layers[0][1].capture_covariance  # step 2 will be recorded
    # exports: non-finite -> null / inf
    mon.history[0]["cond/bn1"] = math.inf
    mon.write_jsonl(tmp_path / "h.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert rows[0]["cond/bn1"] is None and rows[0]["loss"] == 2.0
    mon.write_csv(tmp_path / "h.csv")
    with open(tmp_path / "h.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 1 and float(table[0]["cond/bn1"]) == math.inf
    assert float(table[0]["ortho_err/conv1"]) == pytest.approx(mon.history[0]["ortho_err/conv1"])


def test_monitor_writer_gets_log10_condition():
    class Writer:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    w = Writer()
    model = _dbn()
    mon = ConditionMonitor(model, every=1, writer=w)
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()
    rec = mon.step(loss=1.0)
    tags = {t: v for t, v, _ in w.calls}
    assert tags["log10_cond/bn1"] == pytest.approx(math.log10(rec["cond/bn1"]))
    assert tags["loss"] == 1.0 and all(s == 0 for _, _, s in w.calls)


def test_monitor_parametrized_and_soc_pre_svd():
    from orthocond import ortho

    torch.manual_seed(0)
    model = cifar_resnet18(10, in_channels=1, width=4)
    ortho.orthogonal(model.conv1)
    mon = ConditionMonitor(model, every=1)
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()
    rec = mon.step()
    # effective weight is orthogonal; grad norm is that of the trainable tensor
    assert rec["ortho_err/conv1"] < 1e-5
    theta = model.conv1.parametrizations.weight.original
    assert rec["grad_norm/conv1"] == pytest.approx(float(theta.grad.norm()), rel=1e-6)
    soc = cifar_resnet18(10, in_channels=1, width=4, stem="soc")
    rec = ConditionMonitor(soc, every=1).step()
    assert "ortho_err/conv1" not in rec and "weight_norm/conv1" not in rec
    assert rec["param_norm/conv1"] == pytest.approx(float(soc.conv1.weight.detach().double().norm()))


def test_monitor_bad_arguments():
    with pytest.raises(TypeError):
        ConditionMonitor("model")
    with pytest.raises(ValueError, match="every"):
        ConditionMonitor(_dbn(), every=0)
    with pytest.raises(ValueError, match="max_matrices"):
        ConditionMonitor(_dbn(), max_matrices=0)
    with pytest.raises(ValueError, match="not submodules"):
        ConditionMonitor(_dbn(), pre_svd=[nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="writer"):
        ConditionMonitor(_dbn(), writer=3)


def test_condition_over_the_numerical_range_of_a_singular_covariance():
    from orthocond.analysis import covariance_condition

    lam = torch.tensor([0.0, 0.0, 1e-3, 1.0, 10.0], dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    C = (Q * lam) @ Q.T
    c = covariance_condition(C.float())
    assert c["max"] == math.inf or c["max"] > 1e6  # singular: round-off decides
    assert c["max_range"] == pytest.approx(1e4, rel=1e-3)  # 10 / 1e-3, the range's spread
    full = covariance_condition(torch.diag(torch.tensor([4.0, 1.0])))
    assert full["max_range"] == pytest.approx(4.0) and full["max"] == pytest.approx(4.0)


def test_gcp_run_reports_a_finite_condition_number():
    from orthocond.data import load_dataset
    from orthocond.train import TrainConfig, Trainer

    data = load_dataset("mnist", limit_train=128, limit_test=64)
    trainer = Trainer(TrainConfig(task="gcp", epochs=1, width=4, batch_size=64, monitor_every=1,
                                  tensorboard=False, plots=False), data=data)
    res = trainer.fit()
    assert res.cond_key.startswith("cond_range/")
    assert res.cond_max is not None and 1 < res.cond_max < math.inf
