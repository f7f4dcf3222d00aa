"""polar(method="ns"): the Gram-space Polar Express schedule (default 8 steps)."""

from __future__ import annotations

import pytest
import torch

from orthocond.linalg import polar, polar_express_coefficients


def _with_singular_values(m: int, n: int, kappa: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    sigma = torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), k, dtype=torch.float64) * 3.7
    return (U * sigma) @ V.T, U @ V.T


def _full_size_iteration(G: torch.Tensor, steps: int) -> torch.Tensor:
    """The textbook form: X <- aX + (b XXᵀ + c (XXᵀ)²) X on the full matrix."""
    X = G / torch.linalg.matrix_norm(G @ G.T).sqrt()
    for a, b, c in polar_express_coefficients(steps):
        gram = X @ X.T
        X = a * X + (b * gram + c * gram @ gram) @ X
    return X


@pytest.mark.parametrize("shape", [(64, 27), (27, 64), (256, 512)])
@pytest.mark.parametrize("kappa", [1.0, 1e2, 1e3])
def test_default_schedule_float32_within_1e_4(shape, kappa):
    G, R = _with_singular_values(*shape, kappa)
    err = float((polar(G.float(), "ns").double() - R).norm() / R.norm())
    assert err <= 1e-4


def test_gram_space_iteration_equals_the_full_size_iteration():
    G, _ = _with_singular_values(48, 80, 30.0)
    for steps in (1, 3, 5, 8):
        torch.testing.assert_close(polar(G, "ns", steps=steps), _full_size_iteration(G, steps),
                                   rtol=1e-10, atol=1e-10)


def test_float64_gram_steps_keep_small_singular_values_in_float32():
    # κ = 1e3 on 256×2304: a float32 Gram (σ_min² ~ 1e-8 of the normalised input) gave 2.3e-3
    G, R = _with_singular_values(128, 1152, 1e3, seed=3)
    err = float((polar(G.float(), "ns").double() - R).norm() / R.norm())
    assert err <= 2e-4


def test_batched_and_tall_inputs_match_one_by_one():
    G = torch.randn(3, 40, 24, generator=torch.Generator().manual_seed(1))
    R = polar(G, "ns")
    for i in range(3):
        torch.testing.assert_close(R[i], polar(G[i], "ns"), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(R.transpose(-2, -1) @ R, torch.eye(24).expand(3, 24, 24),
                               rtol=0, atol=1e-3)
