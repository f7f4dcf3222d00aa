"""orthocond.nn.meta and orthocond.train.hybrid: set_meta_layer_method and the hybrid NS→SVD switch."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from orthocond.models import gcp_resnet18
from orthocond.nn import (
    KEEP,
    DecorrelatedBatchNorm1d,
    DecorrelatedBatchNorm2d,
    GlobalCovPool,
    global_cov_pool,
    meta_layer_methods,
    set_meta_layer_method,
    zca_whiten,
)
from orthocond.train import HybridSwitch


def _two_layer_model():
    """DecorrelatedBatchNorm2d followed by a GCP head without reduction (d = 4)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 1),
        DecorrelatedBatchNorm2d(4, method="ns", iters=3, eps=1e-3),
        GlobalCovPool(4, None, method="ns", iters=5, eps=1e-3),
    ).double()


def _tiny_gcp():
    torch.manual_seed(0)
    return gcp_resnet18(num_classes=3, width=4, reduced_channels=6, cifar_stem=True)


def test_set_switches_every_meta_layer_and_keeps_iters():
    model = _two_layer_model()
    assert meta_layer_methods(model) == {"1": ("ns", "exact", 3), "2": ("ns", "exact", 5)}
    assert set_meta_layer_method(model, "eig", backward="pade") == 2
    assert meta_layer_methods(model) == {"1": ("eig", "pade", 3), "2": ("eig", "pade", 5)}
    assert set_meta_layer_method(model, "ns", iters=7) == 2
    assert meta_layer_methods(model) == {"1": ("ns", "exact", 7), "2": ("ns", "exact", 7)}
    assert set_meta_layer_method(model, "mpa", iters=None) == 2
    assert meta_layer_methods(model) == {"1": ("mpa", "exact", None), "2": ("mpa", "exact", None)}
    # types restricts the switch
    assert set_meta_layer_method(model, "eig", types=GlobalCovPool) == 1
    assert meta_layer_methods(model) == {"1": ("mpa", "exact", None), "2": ("eig", "exact", None)}
    assert set_meta_layer_method(nn.Linear(2, 2), "eig") == 0


def test_switched_gcp_computes_the_new_root_and_gradient():
    torch.manual_seed(1)
    head = GlobalCovPool(5, None, method="ns", iters=2).double()
    x = torch.randn(3, 5, 6, 6, dtype=torch.float64, requires_grad=True)
    y_ns = head(x)
    ref_eig = global_cov_pool(x, "eig", backward="pade")
    # 2 Newton-Schulz iterations are far from the exact root ...
    assert (y_ns - ref_eig).abs().max() > 1e-3
    set_meta_layer_method(head, "eig", backward="pade")
    y = head(x)
    # ... the switched layer computes the eigendecomposition root and its Padé gradient
    torch.testing.assert_close(y, ref_eig, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(y)
    (g,) = torch.autograd.grad((y * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref_eig * w).sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_switch_invalidates_the_cached_whitening_matrix():
    torch.manual_seed(2)
    dbn = DecorrelatedBatchNorm1d(4, method="ns", iters=1, eps=1e-3).double()
    mix = torch.randn(4, 4, dtype=torch.float64)
    for _ in range(3):
        dbn(torch.randn(64, 4, dtype=torch.float64) @ mix)
    dbn.eval()
    x = torch.randn(8, 4, dtype=torch.float64) @ mix
    y_ns = dbn(x)  # fills the eval cache with the 1-iteration NS whitening matrix
    assert dbn._whitening_cache is not None
    kwargs = dict(
        running_mean=dbn.running_mean, running_cov=dbn.running_cov, weight=dbn.weight,
        bias=dbn.bias, training=False, eps=dbn.eps,
    )  # fmt: skip
    ref = zca_whiten(x, method="eig", **kwargs)
    assert (y_ns - ref).abs().max() > 1e-2
    assert set_meta_layer_method(dbn, "eig") == 1
    torch.testing.assert_close(dbn(x), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"method": "svd"}, ValueError, "method must be one of"),
        ({"method": "ns", "backward": "pade"}, ValueError, "needs method='eig'"),
        ({"method": "eig", "backward": "fast"}, ValueError, "backward must be one of"),
        ({"method": "ns", "iters": 0}, ValueError, "iters must be >= 1"),
        ({"method": "ns", "iters": 2.0}, TypeError, "iters must be an int"),
        ({"method": "ns", "iters": "all"}, ValueError, "iters must be"),
        ({"method": 1}, TypeError, "method must be a str"),
        ({"method": "eig", "types": "GlobalCovPool"}, TypeError, "types"),
    ],
)
def test_bad_arguments_change_nothing(kwargs, exc, match):
    model = _two_layer_model()
    before = meta_layer_methods(model)
    with pytest.raises(exc, match=match):
        set_meta_layer_method(model, **kwargs)
    assert meta_layer_methods(model) == before
    with pytest.raises(TypeError, match="model must be"):
        set_meta_layer_method("model", "eig")


def test_hybrid_switch_happens_exactly_once():
    model = _tiny_gcp()
    switch = HybridSwitch(model, switch_epoch=4)
    fired = [switch.on_epoch_start(e) for e in range(10)]
    assert fired == [e == 4 for e in range(10)]
    assert switch.switched and switch.switched_at == 4
    assert switch.previous == {"head": ("ns", "exact", 5)}
    assert meta_layer_methods(model) == {"head": ("eig", "pade", 5)}
    # a later manual change is not undone by further calls
    set_meta_layer_method(model, "ns")
    assert switch.step(11) is False
    assert meta_layer_methods(model)["head"][0] == "ns"


def test_hybrid_switch_when_starting_past_the_epoch():
    model = _tiny_gcp()
    switch = HybridSwitch(model, 3, method="eig", backward="exact", iters=KEEP)
    assert switch.on_epoch_start(7) is True  # resumed late without state: switches at once
    assert switch.switched_at == 7
    assert meta_layer_methods(model) == {"head": ("eig", "exact", 5)}


def test_hybrid_training_runs_through_the_switch():
    model = _tiny_gcp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    switch = HybridSwitch(model, switch_epoch=1)
    torch.manual_seed(3)
    x, y = torch.randn(8, 3, 12, 12), torch.randint(0, 3, (8,))
    methods = []
    for epoch in range(2):
        switch.on_epoch_start(epoch)
        methods.append(model.head.method)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    assert methods == ["ns", "eig"]


def test_state_dict_round_trip_restores_the_switch():
    model = _tiny_gcp()
    switch = HybridSwitch(model, 2)
    fresh_state = switch.state_dict()
    for e in range(3):
        switch.on_epoch_start(e)
    state = json.loads(json.dumps(switch.state_dict()))  # JSON-serialisable
    assert state == {
        "switch_epoch": 2, "method": "eig", "backward": "pade", "iters": "keep",
        "switched": True, "switched_at": 2,
    }  # fmt: skip
    # resume: a freshly built model has the NS head again
    model2 = _tiny_gcp()
    switch2 = HybridSwitch(model2, 99, method="mpa", backward="exact")
    switch2.load_state_dict(state)
    assert meta_layer_methods(model2) == {"head": ("eig", "pade", 5)}
    assert switch2.switched and switch2.switch_epoch == 2
    assert switch2.on_epoch_start(3) is False  # does not fire again
    # a state from before the switch leaves the model alone and fires later
    model3 = _tiny_gcp()
    switch3 = HybridSwitch(model3, 7)
    switch3.load_state_dict(fresh_state)
    assert meta_layer_methods(model3) == {"head": ("ns", "exact", 5)}
    assert [switch3.on_epoch_start(e) for e in (1, 2)] == [False, True]


def test_hybrid_switch_bad_input():
    model = _tiny_gcp()
    with pytest.raises(ValueError, match="no meta-layer"):
        HybridSwitch(nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="switch_epoch must be >= 0"):
        HybridSwitch(model, -1)
    with pytest.raises(TypeError, match="switch_epoch must be an int"):
        HybridSwitch(model, 1.0)
    with pytest.raises(ValueError, match="needs method='eig'"):
        HybridSwitch(model, 1, method="ns", backward="pade")
    switch = HybridSwitch(model, 1)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        switch.on_epoch_start(-1)
    with pytest.raises(ValueError, match="missing"):
        switch.load_state_dict({"switched": True})
    bad = dict(switch.state_dict(), method="svd")
    with pytest.raises(ValueError, match="method must be one of"):
        switch.load_state_dict(bad)
    assert meta_layer_methods(model) == {"head": ("ns", "exact", 5)}


def test_rollback_to_a_pre_switch_state_restores_the_layers():
    from orthocond.nn import GlobalCovPool, meta_layer_methods
    from orthocond.train import HybridSwitch

    model = torch.nn.Sequential(GlobalCovPool(8, 4))
    switch = HybridSwitch(model, 2)
    before = switch.state_dict()
    assert switch.on_epoch_start(3) and meta_layer_methods(model)["0"][:2] == ("eig", "pade")
    switch.load_state_dict(before)
    assert not switch.switched and meta_layer_methods(model)["0"] == ("ns", "exact", 5)
    assert not switch.on_epoch_start(1) and switch.on_epoch_start(2)
    # a switched state loaded twice, then the rollback: still the pre-switch settings
    after = switch.state_dict()
    switch.load_state_dict(after)
    switch.load_state_dict(after)
    switch.load_state_dict(before)
    assert meta_layer_methods(model)["0"] == ("ns", "exact", 5)
