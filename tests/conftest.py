from __future__ import annotations

import math

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def spd(
    n: int, kappa: float = 10.0, batch: tuple[int, ...] = (), dtype=torch.float64, seed: int = 0
):
    """Q diag(log-spaced eigenvalues in [1/kappa, 1]) Q^T."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -math.log10(kappa), n, dtype=torch.float64)
    return ((Q * lam) @ Q.transpose(-2, -1)).to(dtype)


def pytest_collection_modifyitems(config, items):
    import os

    skip_slow = pytest.mark.skip(reason="slow: set ORTHOCOND_SLOW=1 to run")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and os.environ.get("ORTHOCOND_SLOW") != "1":
            item.add_marker(skip_slow)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
