"""The eig root's ε: added in float64 to the clamped eigenvalues; the floor without ε."""

from __future__ import annotations

import pytest
import torch

from orthocond.linalg import inv_sqrtm, sqrtm


def test_eps_is_added_to_clamped_eigenvalues_in_float64():
    A = torch.diag(torch.tensor([-1.0, 4.0]))  # indefinite: the -1 is clamped to 0
    W = inv_sqrtm(A, "eig", eps=0.25)
    torch.testing.assert_close(W, torch.diag(torch.tensor([2.0, 4.25 ** -0.5])))
    S = sqrtm(A, "eig", eps=0.25)
    torch.testing.assert_close(S, torch.diag(torch.tensor([0.5, 4.25 ** 0.5])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_eps_is_honoured_and_zero_eps_floors_at_the_input_resolution(dtype):
    A = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=dtype))
    eps = 1e-9  # far below λ_max·n·ε_float32 = 3.6e-7
    W = inv_sqrtm(A, "eig", eps=eps)
    assert float(W[1, 1]) == pytest.approx(eps ** -0.5, rel=1e-5)
    W0 = inv_sqrtm(A, "eig")  # no ε: floored at λ_max·n·ε of the input dtype
    floor = 3 * torch.finfo(dtype).eps
    assert float(W0[1, 1]) == pytest.approx(floor ** -0.5, rel=1e-5)


def test_eps_gradient_passes_gradcheck_with_a_small_eigenvalue():
    # (the clamp at 0 has a kink at a zero eigenvalue, where finite differences are meaningless)
    A = torch.diag(torch.tensor([2.0, 1.0, 1e-3], dtype=torch.float64)) / 2
    A = (A + A.T).div(2).requires_grad_(True)
    for fn in (sqrtm, inv_sqrtm):
        assert torch.autograd.gradcheck(lambda a, fn=fn: fn(a + a.transpose(-2, -1), "eig", eps=1e-2), (A,))
