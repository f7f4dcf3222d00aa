"""torch.compile of one meta-layer (DecorrelatedBatchNorm2d) and one tiny model (Pre-SVD conv,
decorrelated BN, GCP head); the GCP ResNet-18 builder and the inductor backend in slow tests.

``fullgraph=True`` makes any graph break an error, so these tests also prove there is none:
the data-dependent NaN check of :mod:`orthocond.linalg` is skipped while tracing, the custom
autograd Functions (eigendecomposition root, Lyapunov backward) are traced whole, and the
in-place running-statistics update is captured. The fast tests use the ``aot_eager`` backend
(Dynamo + AOTAutograd, no C++ code generation; a few seconds); the same checks with the default
inductor backend take minutes on 2 CPU cores and are marked ``slow`` (``ORTHOCOND_SLOW=1``).

Known limitation, by design: a compiled layer does not raise on NaN input (the check would
need a host synchronisation inside the graph); NaN propagates to the output instead.
"""

from __future__ import annotations

import copy

import pytest
import torch

from orthocond import nn as onn
from orthocond.models import gcp_resnet18

BACKENDS = [
    pytest.param("aot_eager", id="aot_eager"),
    pytest.param("inductor", id="inductor", marks=pytest.mark.slow),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _assert_same_grads(a: torch.nn.Module, b: torch.nn.Module, tol: float) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_decorrelated_batchnorm_matches_eager(backend):
    torch.manual_seed(0)
    eager = onn.DecorrelatedBatchNorm2d(6, groups=2, eps=1e-3)
    with torch.no_grad():
        eager.weight.uniform_(0.5, 1.5)
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, backend=backend, fullgraph=True)
    tol = 1e-5 if backend == "aot_eager" else 1e-4
    for step in range(2):  # the second call reuses the graph with updated buffers
        x = torch.randn(8, 6, 4, 4) + 0.5 * torch.randn(8, 1, 4, 4)
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ye, yc = eager(xe), compiled(xc)
        torch.testing.assert_close(yc, ye, rtol=tol, atol=tol)
        upstream = torch.randn_like(ye)
        (ye * upstream).sum().backward()
        (yc * upstream).sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=tol, atol=tol)
        _assert_same_grads(eager, compiled_layer, tol)
        torch.testing.assert_close(compiled_layer.running_cov, eager.running_cov, rtol=tol, atol=tol)
        assert int(compiled_layer.num_batches_tracked) == step + 1
    # eval mode: running statistics, batch-independent (no graph break: see the next test)
    eager.eval(), compiled_layer.eval()
    compiled = torch.compile(compiled_layer, backend=backend)
    x = torch.randn(3, 6, 4, 4)
    torch.testing.assert_close(compiled(x), eager(x), rtol=tol, atol=tol)
    torch.testing.assert_close(compiled(x[:1]), eager(x)[:1], rtol=tol, atol=tol)


def test_compiled_decorrelated_batchnorm_eval_has_no_graph_break():
    """Regression: the eval cache key (running_cov.data_ptr()/_version) broke the graph; the
    cache is bypassed while compiling."""
    layer = onn.DecorrelatedBatchNorm2d(6)
    layer(torch.randn(8, 6, 4, 4))
    layer.eval()
    x = torch.randn(3, 6, 4, 4)
    expect = layer(x)  # fills the eval cache
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expect)
    torch.testing.assert_close(compiled(x), expect)


def _tiny_model() -> torch.nn.Module:
    """Pre-SVD conv -> decorrelated BN -> ReLU -> GCP head (1x1 Pre-SVD reduction, iSQRT) -> FC."""
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    conv.is_pre_svd = True
    head = onn.GlobalCovPool(8, 4, method="ns")
    return torch.nn.Sequential(
        conv, onn.DecorrelatedBatchNorm2d(8, eps=1e-3), torch.nn.ReLU(), head,
        torch.nn.Linear(head.out_features, 3),
    )


MODELS = [
    pytest.param(_tiny_model, "aot_eager", id="tiny-aot_eager"),
    pytest.param(_tiny_model, "inductor", id="tiny-inductor", marks=pytest.mark.slow),
    pytest.param(lambda: gcp_resnet18(num_classes=3, width=4, reduced_channels=4, cifar_stem=True),
                 "aot_eager", id="gcp_resnet18-aot_eager", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("build,backend", MODELS)
def test_compiled_model_matches_eager(build, backend):
    torch.manual_seed(0)
    eager = build()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    x = torch.randn(4, 3, 6, 6)
    target = torch.tensor([0, 2, 1, 0])
    tol = 1e-5 if backend == "aot_eager" else 1e-3
    out_e, out_c = eager(x), compiled(x)
    torch.testing.assert_close(out_c, out_e, rtol=tol, atol=tol)
    torch.nn.functional.cross_entropy(out_e, target).backward()
    torch.nn.functional.cross_entropy(out_c, target).backward()
    _assert_same_grads(eager, compiled_model, tol)
    grads = [p.grad for p in compiled_model.parameters() if getattr(p, "grad", None) is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


def test_no_graph_breaks_reported_by_dynamo_explain():
    """The documentation of graph breaks: none for the layer and the tiny model in training."""
    torch.manual_seed(0)
    for module, x in (
        (onn.DecorrelatedBatchNorm2d(4), torch.randn(4, 4, 3, 3)),
        (_tiny_model(), torch.randn(2, 3, 6, 6)),
    ):
        explanation = torch._dynamo.explain(module)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
