"""Test helpers shared across the test tree (tests/ is on ``sys.path``: ``from helpers import spd``)."""

from __future__ import annotations

import math

import torch


def spd(
    n: int, kappa: float = 10.0, batch: tuple[int, ...] = (), dtype=torch.float64, seed: int = 0
):
    """Q diag(log-spaced eigenvalues in [1/kappa, 1]) Q^T."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -math.log10(kappa), n, dtype=torch.float64)
    return ((Q * lam) @ Q.transpose(-2, -1)).to(dtype)
