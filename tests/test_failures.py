"""Training failures of decorrelated BN and the eigen-gradient (issue #7, measured).

The claim under test is the textbook one: that ``backward="svd"`` (K_ij = 1/(λi - λj),
guarded) makes DBN training fail where the Daleckii–Krein ``backward="exact"`` does not.
In orthocond it does not, and these tests pin down why, with the measured numbers:

* The only place where ``svd`` and ``exact`` differ is an exact tie of eigenvalues. A DBN
  covariance of the MNIST stem (conv 1 -> 16 channels, 3x3: rank <= 9) has 7 null
  eigenvalues that are floored to one value, so ``svd`` drops the off-diagonal part of the
  null-null block of dL/dΣ (about 90 % of its norm), while the rest agrees to rounding.
* The null-null block never reaches a parameter: Σ = W C Wᵀ and the centred features lie
  in range(W), so dL/dW only sees the blocks that agree. The stem gradients agree to
  about 1e-4 relative in float32.
* At lr = 8 (eps = 1e-5, 8 seeds) ``exact``, ``svd`` and ``pade`` fail in the same seeds
  at the same step (a learning-rate divergence, not an eigen-gradient one).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from orthocond import linalg
from orthocond.data import load_dataset
from orthocond.models import cifar_resnet18
from orthocond.training import TrainConfig, train


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", limit_train=2048, limit_test=256, num_workers=0)


def _rank_deficient_cov(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Σ = cov(W P) of 16 channels from 9-dim patches (rank 9), its null projector, and G."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 9, generator=g, dtype=torch.float64)
    P = torch.randn(9, 4096, generator=g, dtype=torch.float64)
    cov = linalg.covariance((W @ P).to(dtype))
    Q, _ = torch.linalg.qr(W)
    null = torch.eye(16, dtype=torch.float64) - Q @ Q.T
    G = torch.randn(16, 16, generator=g, dtype=torch.float64).to(dtype)
    return cov, null, G


def _cov_grad(cov: torch.Tensor, G: torch.Tensor, backward: str) -> torch.Tensor:
    A = cov.clone().requires_grad_()
    (linalg.inv_sqrtm(A, "eig", backward=backward) * G).sum().backward()
    return A.grad.double()


@pytest.mark.parametrize(
    "dtype, outside_tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)]
)  # measured: 7.9e-15 (float64), 2.3e-7 (float32)
def test_svd_backward_differs_only_in_the_tied_null_block(dtype, outside_tol):
    cov, null, G = _rank_deficient_cov(dtype)
    exact, svd = _cov_grad(cov, G, "exact"), _cov_grad(cov, G, "svd")
    assert torch.isfinite(exact).all() and torch.isfinite(svd).all()
    diff = svd - exact
    scale = exact.norm()
    # svd drops the off-diagonal ties of the floored null eigenvalues: ~0.91 (f64), ~0.95 (f32)
    assert diff.norm() / scale > 0.5
    assert (diff - null @ diff @ null).norm() / scale < outside_tol
    # and ``exact`` is the larger of the two: the ties carry its biggest entries
    assert svd.norm() < 0.5 * scale


@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_stem_gradient_does_not_depend_on_the_eigen_gradient(mnist, eps):
    x, y = next(iter(mnist.train_batches(32, seed=0, augment=False)))
    grads = {}
    for backward in ("exact", "svd"):
        torch.manual_seed(0)
        model = cifar_resnet18(
            10, in_channels=1, width=16, whitening=True, method="eig", backward=backward, eps=eps
        )
        with torch.no_grad():
            model.conv1.weight.mul_(30.0)  # λ_max of a trained stem: the floor ties the nulls
        cov = model.conv1(x).transpose(0, 1).reshape(16, -1)
        assert torch.linalg.matrix_rank(linalg.covariance(cov.double()), rtol=1e-6) <= 9
        F.cross_entropy(model(x), y).backward()
        grads[backward] = model.conv1.weight.grad.double()
    rel = (grads["svd"] - grads["exact"]).norm() / grads["exact"].norm()
    assert grads["exact"].norm() > 0
    assert rel < 1e-3  # measured 8.0e-5 (eps=0), 1.0e-4 (eps=1e-5)


def _run(data, backward: str, seed: int):
    cfg = TrainConfig(
        epochs=1, batch_size=32, limit_train=2048, limit_test=256, width=16, eps=1e-5, lr=8.0,
        augment=False, workers=0, device="cpu", seed=seed, backward=backward,
        tensorboard=False, plots=False, checkpoint=False,
    )  # fmt: skip
    return train(cfg, data=data, log=lambda msg: None)


def test_lr_divergence_is_counted_alike_for_svd_and_exact(mnist):
    # Seeds 4 and 5 are the 2 of 8 (seeds 0..7, 64 steps) that diverge at lr = 8 with
    # exact, svd and pade alike; the others train to the end.
    results = {b: [_run(mnist, b, s) for s in (4, 5)] for b in ("exact", "svd")}
    for backward, runs in results.items():
        assert sum(r.failed for r in runs) == 2, backward
        assert all(r.reason.startswith("diverged: loss") for r in runs)
    assert [r.steps for r in results["svd"]] == [r.steps for r in results["exact"]]
    assert all(r.steps < 16 for r in results["svd"])
