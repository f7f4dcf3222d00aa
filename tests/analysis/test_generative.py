"""Generative metrics: Fréchet distance against scipy, VP/PPL on generators with known answers."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

gen = importlib.import_module("orthocond.analysis.generative")
scipy_linalg = pytest.importorskip("scipy.linalg")


def scipy_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's formula: scipy.linalg.sqrtm of sigma1 @ sigma2 (offset if not finite)."""
    diff = mu1 - mu2
    covmean = scipy_linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy_linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def random_cov(d, rank, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, rank))
    return a @ a.T / rank


@pytest.mark.parametrize("d, rank1, rank2", [(5, 5, 5), (16, 16, 16), (12, 4, 12), (10, 3, 6), (8, 2, 2)])
def test_frechet_distance_matches_scipy(d, rank1, rank2):
    rng = np.random.default_rng(d + rank1 + rank2)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_cov(d, rank1, 1), random_cov(d, rank2, 2)
    ours = gen.frechet_distance(mu1, s1, mu2, s2)
    assert ours.dtype == torch.float64 and ours.ndim == 0
    ref = scipy_frechet(mu1, s1, mu2, s2)
    assert abs(float(ours) - ref) <= 1e-8 * max(1.0, abs(ref))


def test_frechet_distance_torch_inputs_identity_and_zero():
    s = torch.from_numpy(random_cov(6, 6, 0))
    mu = torch.randn(6, dtype=torch.float64)
    assert float(gen.frechet_distance(mu, s, mu, s)) == pytest.approx(0.0, abs=1e-10)
    z = torch.zeros(4, 4)
    # both covariances zero (rank 0): the distance is the squared mean difference
    assert float(gen.frechet_distance(torch.zeros(4), z, torch.ones(4), z)) == pytest.approx(4.0)
    # float32 inputs are computed in float64
    assert gen.frechet_distance(mu.float(), s.float(), mu.float(), 2 * s.float()).dtype == torch.float64


def test_frechet_distance_bad_input():
    e = torch.eye(3)
    with pytest.raises(ValueError, match="mu2"):
        gen.frechet_distance(torch.zeros(3), e, torch.zeros(4), e)
    with pytest.raises(ValueError, match="sigma2"):
        gen.frechet_distance(torch.zeros(3), e, torch.zeros(3), torch.eye(4))
    with pytest.raises(ValueError, match="sigma1"):
        gen.frechet_distance(torch.zeros(3), torch.zeros(3), torch.zeros(3), e)
    with pytest.raises(ValueError, match="NaN"):
        gen.frechet_distance(torch.tensor([0.0, float("nan"), 0.0]), e, torch.zeros(3), e)
    with pytest.raises(TypeError, match="mu1"):
        gen.frechet_distance([0.0, 0.0, 0.0], e, torch.zeros(3), e)


def test_feature_statistics():
    f = torch.randn(50, 4, dtype=torch.float64)
    mu, sigma = gen.feature_statistics(f)
    assert torch.allclose(mu, f.mean(0))
    assert torch.allclose(sigma, torch.cov(f.T))
    with pytest.raises(ValueError, match="at least 2 rows"):
        gen.feature_statistics(f[:1])


class RegionGenerator(nn.Module):
    """Latent dim i sets the brightness of its own 7x7 block; other pixels stay 0."""

    def __init__(self, latent_dim: int = 6) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, z):
        out = torch.zeros(z.shape[0], 1, 28, 28, dtype=z.dtype, device=z.device)
        for i in range(self.latent_dim):
            r, c = divmod(i, 4)
            out[:, 0, 7 * r : 7 * r + 7, 7 * c : 7 * c + 7] = torch.sigmoid(z[:, i])[:, None, None]
        return out


class ConstantGenerator(nn.Module):
    def __init__(self, latent_dim: int = 6) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.image = nn.Parameter(torch.rand(1, 1, 28, 28))

    def forward(self, z):
        return self.image.expand(z.shape[0], -1, -1, -1).to(z.dtype)


FAST_VP = dict(train_pairs=600, test_pairs=300, epochs=4)


def test_vp_near_one_for_region_generator():
    assert gen.variation_predictability(RegionGenerator(6), **FAST_VP) >= 0.95


def test_vp_chance_for_generator_ignoring_z():
    acc = gen.variation_predictability(ConstantGenerator(6), **FAST_VP)
    assert abs(acc - 1 / 6) <= 0.02  # balanced labels: a constant guess scores exactly 1/6


def test_vp_bad_input():
    with pytest.raises(ValueError, match="latent_dim"):
        gen.variation_predictability(lambda z: z, None)
    with pytest.raises(TypeError, match="latent_dim"):
        gen.variation_predictability(RegionGenerator(3), 2.5)
    with pytest.raises(ValueError, match="at least 2"):
        gen.variation_predictability(RegionGenerator(1))
    with pytest.raises(ValueError, match="shift"):
        gen.variation_predictability(RegionGenerator(3), shift=0.0)


class TinyFeatures(gen.DigitClassifier):
    """An untrained feature network: the metrics' arithmetic does not depend on training."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.eval()


def test_ppl_zero_for_constant_generator_positive_otherwise():
    f = TinyFeatures()
    assert gen.perceptual_path_length(ConstantGenerator(5), samples=64, extractor=f) == 0.0
    assert gen.perceptual_path_length(RegionGenerator(5), samples=64, extractor=f) > 0.0


def test_ppl_bad_input():
    f = TinyFeatures()
    with pytest.raises(ValueError, match="epsilon"):
        gen.perceptual_path_length(RegionGenerator(3), epsilon=0.0, extractor=f)
    with pytest.raises(ValueError, match="samples"):
        gen.perceptual_path_length(RegionGenerator(3), samples=1, extractor=f)


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(10, 5, dtype=torch.float64), torch.randn(10, 5, dtype=torch.float64)
    assert torch.allclose(gen.slerp(a, b, torch.zeros(10)), a)
    assert torch.allclose(gen.slerp(a, b, torch.ones(10)), b)
    u = torch.nn.functional.normalize(a, dim=1)
    v = torch.nn.functional.normalize(b, dim=1)
    mid = gen.slerp(u, v, torch.full((10,), 0.3, dtype=torch.float64))
    assert torch.allclose(mid.norm(dim=1), torch.ones(10, dtype=torch.float64))
    assert torch.allclose(gen.slerp(u, u, torch.full((10,), 0.5, dtype=torch.float64)), u)


def test_fid_identical_sets_zero_and_shapes_checked():
    f = TinyFeatures()
    x = torch.rand(40, 1, 28, 28)
    assert gen.fid(x, x, f) == pytest.approx(0.0, abs=1e-8)
    assert gen.fid(x, (x * 255).to(torch.uint8), f) < gen.fid(x, torch.zeros(40, 1, 28, 28) + 0.5, f)
    with pytest.raises(ValueError, match="fake"):
        gen.fid(torch.rand(4, 1, 14, 14), x, f)
    with pytest.raises(ValueError, match="real"):
        gen.fid(x, x[:1], f)


def test_layer_conditioning():
    q = torch.linalg.qr(torch.randn(20, 4, dtype=torch.float64))[0].T  # orthonormal rows
    out = gen.layer_conditioning(q.reshape(4, 5, 2, 2))
    assert out["kappa"] == pytest.approx(1.0) and out["ortho_err"] == pytest.approx(0.0, abs=1e-12)
    w = torch.diag(torch.tensor([1.0, 2.0, 4.0]))
    both = gen.layer_conditioning([q, w])
    assert both["kappa"] == pytest.approx(4.0)
    assert both["ortho_err"] == pytest.approx(float(np.sqrt(0 + 9 + 225)))
    assert gen.layer_conditioning(torch.zeros(2, 3))["kappa"] == float("inf")
    with pytest.raises(ValueError, match="at least one"):
        gen.layer_conditioning([])


def test_latent_traversal_sets_each_dim(tmp_path):
    g = RegionGenerator(5)
    images = gen.latent_traversal(g, values=(-2.0, 0.0, 2.0), z=torch.zeros(5))
    assert images.shape == (5, 3, 1, 28, 28)
    # row i, column j: block i has brightness sigmoid(values[j]), the others sigmoid(0)
    assert images[2, 0, 0, 0, 14].item() == pytest.approx(torch.sigmoid(torch.tensor(-2.0)).item())
    assert images[2, 0, 0, 0, 0].item() == pytest.approx(0.5)
    pytest.importorskip("matplotlib")
    path = gen.save_traversal_grid(images, tmp_path / "grid.png", title="region")
    assert path.stat().st_size > 0 and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="z must"):
        gen.latent_traversal(g, z=torch.zeros(4))
    with pytest.raises(ValueError, match="images"):
        gen.save_traversal_grid(images[0], tmp_path / "x.png")
