"""Metrics of digit generators with no downloads: FID, PPL and VP in the feature space of a
small digit classifier, conditioning of the layer NOG/OLR act on, latent-traversal grids.

* :func:`frechet_distance` — the Fréchet distance of two Gaussians, in float64.
* :func:`digit_features` — a small CNN the library trains once on the embedded MNIST digits
  (deterministic: fixed seed, one thread) and caches next to the digits' cache
  (``$ORTHOCOND_CACHE`` or ``~/.cache/orthocond``) under a versioned key; its 64-d
  penultimate activations are the feature space of FID and PPL (the digits' stand-in for
  Inception features).
* :func:`fid`, :func:`perceptual_path_length`, :func:`variation_predictability`,
  :func:`layer_conditioning`, :func:`latent_traversal`, :func:`save_traversal_grid`.

Images are ``(B, 1, 28, 28)`` in [0, 1] (the generators of :mod:`orthocond.models`).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthocond._checks import check_float, check_int
from orthocond.linalg import sqrtm

__all__ = [
    "FEATURES_VERSION",
    "DigitClassifier",
    "digit_features",
    "feature_statistics",
    "fid",
    "frechet_distance",
    "latent_traversal",
    "layer_conditioning",
    "perceptual_path_length",
    "save_traversal_grid",
    "slerp",
    "variation_predictability",
]

# Bump when the classifier, its training or its input convention changes: the cache key
# carries it, so a stale network is never reused.
FEATURES_VERSION = 1
FEATURE_DIM = 64

Generator = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- Fréchet distance
def _as_float64(x: Any, name: str, ndim: int) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be real-valued, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dim(s), got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return x


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> Tensor:
    r"""Fréchet distance of :math:`N(\mu_1, \Sigma_1)` and :math:`N(\mu_2, \Sigma_2)`:

    .. math:: \|\mu_1 - \mu_2\|^2 + \mathrm{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})

    computed in float64. :math:`\mathrm{tr}(\Sigma_1\Sigma_2)^{1/2}` is taken as
    :math:`\mathrm{tr}(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}` (the same eigenvalues, a
    symmetric PSD argument), both roots by :func:`orthocond.linalg.sqrtm` with
    ``method="eig"``, which keeps null spaces at 0: finite for singular covariances, with no
    ε added (pytorch-fid's ``sqrtm`` of the non-symmetric :math:`\Sigma_1\Sigma_2` needs one).
    Clamped at 0 (rounding can leave ``-1e-13`` for equal inputs).

    Args:
        mu1, mu2 (Tensor[d] or ndarray): means.
        sigma1, sigma2 (Tensor[d, d] or ndarray): symmetric PSD covariances (the symmetric part
            is used).

    Returns:
        0-dim float64 tensor (``float(...)`` for a number).

    Example:
        >>> frechet_distance(torch.zeros(2), torch.eye(2), torch.ones(2), torch.eye(2)).item()
        2.0
    """
    m1 = _as_float64(mu1, "mu1", 1)
    m2 = _as_float64(mu2, "mu2", 1)
    s1 = _as_float64(sigma1, "sigma1", 2)
    s2 = _as_float64(sigma2, "sigma2", 2)
    d = m1.shape[0]
    for name, m in (("mu2", m2),):
        if m.shape != m1.shape:
            raise ValueError(f"{name} must have shape {tuple(m1.shape)} like mu1, got {tuple(m.shape)}")
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}) to match mu1, got {tuple(s.shape)}")
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    root1 = sqrtm(s1, method="eig")
    cross = sqrtm(root1 @ s2 @ root1, method="eig")
    value = (m1 - m2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * torch.trace(cross)
    return value.clamp_min(0.0)


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of ``features (Tensor[N, d])``, float64.

    ``ValueError`` for fewer than two rows.
    """
    f = _as_float64(features, "features", 2)
    if f.shape[0] < 2:
        raise ValueError(f"features needs at least 2 rows for a covariance, got {f.shape[0]}")
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


# --------------------------------------------------------------------------- feature network
class DigitClassifier(nn.Module):
    """The feature network: conv(1→16)–pool–conv(16→32)–pool–fc(1568→64) (ReLU) → fc(64→10).

    ``features(x)`` returns the 64-d penultimate activations of images ``(B, 1, 28, 28)`` in
    [0, 1]; ``forward`` the 10 class logits. ``test_accuracy`` is set by :func:`digit_features`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        self.fc = nn.Linear(32 * 7 * 7, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)
        self.test_accuracy = float("nan")

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(self.conv(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _images(x: Tensor) -> Tensor:
    return x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x


def _train_classifier(data: Any, seed: int, epochs: int) -> DigitClassifier:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reductions, hence the same weights, each time
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitClassifier()
            opt = torch.optim.Adam(model.parameters(), lr=2e-3)
            x, y = _images(data.train[0]), data.train[1]
            g = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                order = torch.randperm(x.shape[0], generator=g)
                for idx in order.split(64):
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                xt, yt = _images(data.test[0]), data.test[1]
                pred = torch.cat([model(b).argmax(1) for b in xt.split(500)])
                model.test_accuracy = float((pred == yt).double().mean())
    finally:
        torch.set_num_threads(threads)
    return model


def _data_key(data: Any) -> str:
    h = hashlib.sha1()
    for t in (*data.train, *data.test):
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()[:16]


def digit_features(*, cache: bool = True, seed: int = 0, epochs: int = 4) -> DigitClassifier:
    """The feature network of FID and PPL, trained once on the embedded MNIST digits.

    Trained on the 4,000-image train split of :func:`orthocond.data.load_mnist` (Adam 2e-3,
    batch 64, ``epochs`` epochs, seed ``seed``, one thread), then saved under
    ``<cache>/digit_features_v{FEATURES_VERSION}_<data hash>_s<seed>e<epochs>.pt`` and loaded
    from there afterwards (``cache=False`` trains afresh and writes nothing). The returned
    network is in eval mode with ``requires_grad`` off; ``.test_accuracy`` is its accuracy on
    the 1,000 test digits (about 0.97).
    """
    from orthocond.data import load_mnist
    from orthocond.data.datasets import _cache_dir

    data = load_mnist()
    path = _cache_dir() / (
        f"digit_features_v{FEATURES_VERSION}_{_data_key(data)}_s{seed}e{epochs}.pt"
    )
    model: DigitClassifier | None = None
    if cache and path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model = DigitClassifier()
            model.load_state_dict(saved["state_dict"])
            model.test_accuracy = float(saved["test_accuracy"])
        except (OSError, RuntimeError, KeyError, ValueError):
            model = None
    if model is None:
        model = _train_classifier(data, seed, epochs)
        if cache:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                torch.save(
                    {"state_dict": model.state_dict(), "test_accuracy": model.test_accuracy}, tmp
                )
                os.replace(tmp, path)
            except OSError:
                pass
    model.eval()
    model.requires_grad_(False)
    return model


def _check_images(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    x = _images(x)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating (or uint8) images, got {x.dtype}")
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"{name} must have shape (N, 1, 28, 28), got {tuple(x.shape)}")
    return x


@torch.no_grad()
def _features(extractor: DigitClassifier, x: Tensor, batch_size: int = 500) -> Tensor:
    dev = next(extractor.parameters()).device
    dtype = next(extractor.parameters()).dtype
    return torch.cat(
        [extractor.features(b.to(device=dev, dtype=dtype)) for b in x.split(batch_size)]
    )


def fid(
    fake: Tensor, real: Tensor, extractor: DigitClassifier | None = None
) -> float:
    """FID of two image sets in the digit-feature space (:func:`digit_features`).

    Args:
        fake, real (Tensor[N, 1, 28, 28]): images in [0, 1] (uint8 is divided by 255), at
            least 2 each. FID is biased upwards for small N: compare runs at equal N.
        extractor: the feature network (default :func:`digit_features`).
    """
    fake = _check_images(fake, "fake")
    real = _check_images(real, "real")
    for name, x in (("fake", fake), ("real", real)):
        if x.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 images, got {x.shape[0]}")
    extractor = digit_features() if extractor is None else extractor
    return float(frechet_distance(*feature_statistics(_features(extractor, fake)),
                                  *feature_statistics(_features(extractor, real))))


# --------------------------------------------------------------------------- latent metrics
def _latent_dim(generator: Any, latent_dim: int | None) -> int:
    d = latent_dim if latent_dim is not None else getattr(generator, "latent_dim", None)
    if d is None:
        raise ValueError("latent_dim must be given when the generator has no .latent_dim")
    return check_int(d, "latent_dim")


class _EvalMode:
    """Puts modules in eval mode and restores their training flags afterwards."""

    def __init__(self, *modules: Any) -> None:
        self.modules = [m for m in modules if isinstance(m, nn.Module)]

    def __enter__(self) -> None:
        self.flags = [[sub.training for sub in m.modules()] for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, flags in zip(self.modules, self.flags):
            for sub, flag in zip(m.modules(), flags):
                sub.training = flag


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    r"""Spherical interpolation :math:`\frac{\sin((1-t)\Omega)}{\sin\Omega}a + \frac{\sin(t\Omega)}{\sin\Omega}b`
    row-wise, :math:`\Omega` the angle between rows of ``a`` and ``b`` (linear where Ω ≈ 0)."""
    na = a / a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    nb = b / b.norm(dim=1, keepdim=True).clamp_min(1e-30)
    omega = torch.arccos((na * nb).sum(dim=1, keepdim=True).clamp(-1.0, 1.0))
    so = torch.sin(omega)
    small = so.abs() < 1e-7
    t = t.reshape(-1, 1)
    wa = torch.where(small, 1 - t, torch.sin((1 - t) * omega) / torch.where(small, 1, so))
    wb = torch.where(small, t, torch.sin(t * omega) / torch.where(small, 1, so))
    return wa * a + wb * b


@torch.no_grad()
def perceptual_path_length(
    generator: Generator,
    latent_dim: int | None = None,
    *,
    samples: int = 1000,
    epsilon: float = 1e-4,
    extractor: DigitClassifier | None = None,
    batch_size: int = 250,
    seed: int = 0,
) -> float:
    r"""Perceptual path length (StyleGAN's PPL, in z with slerp) in digit-feature space.

    For :math:`z_0, z_1 \sim N(0, I)`, :math:`t \sim U(0, 1)`:
    :math:`d = \|\phi(G(\mathrm{slerp}(z_0, z_1, t))) - \phi(G(\mathrm{slerp}(z_0, z_1, t+\epsilon)))\|^2/\epsilon^2`
    with :math:`\phi` the 64-d features of :func:`digit_features`; the result is the mean of
    the ``d`` between the 1st and 99th percentiles. Generator and extractor run on float64
    copies in eval mode (a 1e-4 step is below float32's resolution of the features), so a
    generator that ignores ``z`` gives exactly 0.

    Args:
        generator: an ``nn.Module`` (or callable) mapping ``(B, latent_dim)`` to images.
        latent_dim: default ``generator.latent_dim``.
        samples (int): pairs, at least 2. Default 1000.
        epsilon (float): step, > 0. Default 1e-4.
        seed (int): seed of the latent draws (a private ``torch.Generator``).
    """
    d = _latent_dim(generator, latent_dim)
    check_int(samples, "samples", minimum=2)
    check_int(batch_size, "batch_size")
    check_float(epsilon, "epsilon", low=0, high=1, low_open=True, high_open=True)
    extractor = digit_features() if extractor is None else extractor
    g64 = copy.deepcopy(generator).double() if isinstance(generator, nn.Module) else generator
    f64 = copy.deepcopy(extractor).double()
    dev = _device_of(generator)
    rng = torch.Generator().manual_seed(seed)
    z0 = torch.randn(samples, d, generator=rng, dtype=torch.float64)
    z1 = torch.randn(samples, d, generator=rng, dtype=torch.float64)
    t = torch.rand(samples, generator=rng, dtype=torch.float64)
    dists = []
    with _EvalMode(g64, f64):
        f64.to(dev)
        for sl in torch.arange(samples).split(batch_size):
            a = slerp(z0[sl], z1[sl], t[sl]).to(dev)
            b = slerp(z0[sl], z1[sl], t[sl] + epsilon).to(dev)
            fa = f64.features(g64(a).to(torch.float64))
            fb = f64.features(g64(b).to(torch.float64))
            dists.append(((fa - fb).square().sum(dim=1) / epsilon**2).cpu())
    dist = torch.cat(dists).numpy()
    lo, hi = np.percentile(dist, [1, 99])
    kept = dist[(dist >= lo) & (dist <= hi)]
    return float(kept.mean())


def _device_of(generator: Any) -> torch.device:
    if isinstance(generator, nn.Module):
        for p in generator.parameters():
            return p.device
    return torch.device("cpu")


class _PairPredictor(nn.Module):
    """Predicts the changed latent dim from an image pair stacked as 2 channels."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels, 16, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.LazyLinear(classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@torch.no_grad()
def _pairs(generator: Generator, d: int, n: int, shift: float, rng: torch.Generator,
           dev: torch.device, batch_size: int) -> tuple[Tensor, Tensor]:
    z = torch.randn(n, d, generator=rng)
    labels = torch.arange(n) % d  # balanced, so chance is exactly 1/d
    labels = labels[torch.randperm(n, generator=rng)]
    sign = torch.randint(0, 2, (n,), generator=rng).float() * 2 - 1
    z2 = z.clone()
    z2[torch.arange(n), labels] += sign * shift
    out = []
    for sl in torch.arange(n).split(batch_size):
        x1 = generator(z[sl].to(dev)).float().cpu()
        x2 = generator(z2[sl].to(dev)).float().cpu()
        out.append(torch.cat([x1, x2], dim=1))
    return torch.cat(out), labels


def variation_predictability(
    generator: Generator,
    latent_dim: int | None = None,
    *,
    train_pairs: int = 4000,
    test_pairs: int = 1000,
    shift: float = 2.0,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> float:
    r"""Variation Predictability (Zhu et al., ECCV 2020): held-out accuracy of a small CNN that
    tells which latent dimension changed between two generated images.

    Pairs: :math:`z \sim N(0, I)`, a dimension :math:`k` (balanced over the ``latent_dim``
    classes, so chance is :math:`1/d`), :math:`z' = z \pm` ``shift`` :math:`e_k` (random sign);
    the predictor sees :math:`(G(z), G(z'))` stacked as channels, trains for ``epochs`` epochs
    on ``train_pairs`` pairs (Adam) and is scored on ``test_pairs`` fresh pairs. Higher means
    each latent dimension has a recognisable, distinct effect (disentanglement).

    Args:
        generator: maps ``(B, latent_dim)`` to images ``(B, C, H, W)``; run in eval mode.
        seed: seeds the pairs and the predictor (private generators; the global RNG is
            restored afterwards).

    Returns:
        Accuracy in [0, 1].
    """
    d = _latent_dim(generator, latent_dim)
    if d < 2:
        raise ValueError(f"latent_dim must be at least 2 for VP (one class is trivial), got {d}")
    check_int(train_pairs, "train_pairs", minimum=2)
    check_int(test_pairs, "test_pairs")
    check_int(epochs, "epochs")
    check_int(batch_size, "batch_size")
    check_float(shift, "shift", low=0, low_open=True)
    dev = _device_of(generator)
    rng = torch.Generator().manual_seed(seed)
    with _EvalMode(generator):
        x_train, y_train = _pairs(generator, d, train_pairs, shift, rng, dev, 500)
        x_test, y_test = _pairs(generator, d, test_pairs, shift, rng, dev, 500)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = _PairPredictor(x_train.shape[1] // 2, d)
        predictor(x_train[:1])  # materialise the lazy layer before the optimizer sees it
        opt = torch.optim.Adam(predictor.parameters(), lr=lr)
        for _ in range(epochs):
            order = torch.randperm(train_pairs, generator=rng)
            for idx in order.split(batch_size):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(predictor(x_train[idx]), y_train[idx]).backward()
                opt.step()
    with torch.no_grad():
        pred = torch.cat([predictor(b).argmax(1) for b in x_test.split(500)])
    return float((pred == y_test).double().mean())


# --------------------------------------------------------------------------- the acted-on layer
def layer_conditioning(weights: Union[Tensor, Iterable[Tensor]]) -> dict[str, float]:
    r"""κ and orthogonality error of the layer(s) NOG/OLR act on.

    Each weight is flattened to ``(rows, rest)`` (a DCGAN first layer ``(latent_dim,
    C_out·k·k)``, a subspace basis ``(dims, C·H·W)``). Returns ``{"kappa": ..., "ortho_err":
    ...}``: :math:`\sigma_{max}/\sigma_{min}` of the matrix (``inf`` when rank-deficient) and
    :math:`\|WW^T - I\|_F` on the smaller Gram (:func:`orthocond.ortho.orthogonality_error`),
    each the largest over the weights (the worst layer), in float64.
    """
    from orthocond.ortho import orthogonality_error

    if isinstance(weights, Tensor):
        weights = [weights]
    kappas, errs = [], []
    for w in weights:
        W = w.detach().to(torch.float64).reshape(w.shape[0], -1)
        s = torch.linalg.svdvals(W)
        kappas.append(float(s[0] / s[-1]) if float(s[-1]) > 0 else math.inf)
        errs.append(float(orthogonality_error(W)))
    if not kappas:
        raise ValueError("weights must hold at least one tensor")
    return {"kappa": max(kappas), "ortho_err": max(errs)}


# --------------------------------------------------------------------------- traversals
@torch.no_grad()
def latent_traversal(
    generator: Generator,
    latent_dim: int | None = None,
    *,
    values: Sequence[float] = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0),
    z: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """Images of one latent code with each dimension swept over ``values``.

    Args:
        values: what each dimension is set to, one column each. Default -3 to 3.
        z (Tensor[latent_dim], optional): the base code; default a standard normal draw
            with ``seed``.

    Returns:
        Tensor[latent_dim, len(values), C, H, W]: row ``i`` sets dimension ``i`` of ``z`` to
        each value (the other dims fixed), in eval mode.
    """
    d = _latent_dim(generator, latent_dim)
    vals = torch.as_tensor(list(values), dtype=torch.float32)
    if vals.ndim != 1 or vals.numel() < 1 or not bool(torch.isfinite(vals).all()):
        raise ValueError("values must be a non-empty sequence of finite numbers")
    if z is None:
        z = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    if not isinstance(z, Tensor) or z.shape != (d,):
        raise ValueError(f"z must be a Tensor of shape ({d},)")
    codes = z.float().repeat(d, vals.numel(), 1)  # (d, S, d)
    idx = torch.arange(d)
    codes[idx, :, idx] = vals
    with _EvalMode(generator):
        images = generator(codes.reshape(-1, d).to(_device_of(generator))).float().cpu()
    return images.reshape(d, vals.numel(), *images.shape[1:])


def save_traversal_grid(
    images: Tensor, path: Union[str, os.PathLike], *, title: str | None = None
) -> Path:
    """Write a traversal (``latent_traversal``'s ``(rows, cols, C, H, W)``) as a PNG grid.

    Needs matplotlib (``pip install 'orthocond[cli]'``). Rows are latent dims (labelled
    ``z0, z1, ...``), columns the swept values. Returns the path written.
    """
    if not isinstance(images, Tensor) or images.ndim != 5:
        raise ValueError("images must be a Tensor of shape (rows, cols, C, H, W)")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("traversal grids need matplotlib: pip install matplotlib") from exc
    rows, cols, c, h, w = images.shape
    grid = images.clamp(0, 1).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    # about one screen pixel per image pixel at dpi 100 (a small file, no resampling blur)
    inch = h / 100
    fig, ax = plt.subplots(figsize=(cols * inch + 0.5, rows * inch + (0.4 if title else 0.15)))
    ax.imshow(grid.squeeze(-1).numpy() if c == 1 else grid.numpy(), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_yticks([(i + 0.5) * h for i in range(rows)], [f"z{i}" for i in range(rows)], fontsize=6)
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
