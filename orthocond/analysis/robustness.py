"""Common-corruption robustness: corruptions generated on the fly, errors, mCE.

CVPR 2020 evaluates GCP against GAP networks on ImageNet-C (Hendrycks & Dietterich, ICLR
2019; FORMULAS §8, "Corruption robustness"). This module generates six of those
corruptions for any image batch, at five severities, deterministically given a
``torch.Generator``, and computes the corruption errors:

* ``E_{s,c}``: top-1 error on corruption c at severity s (a fraction in [0, 1]);
* ``CE_c = 100·Σ_s E_{s,c} / Σ_s E^{base}_{s,c}``, ``mCE = mean_c CE_c`` (in %);
* relative ``CE_c = 100·Σ_s (E_{s,c} − E_clean) / Σ_s (E^{base}_{s,c} − E^{base}_clean)``,
  relative mCE = its mean (in %).

The baseline is any earlier result of :func:`evaluate_corruptions` (ImageNet-C uses AlexNet;
here e.g. the GAP run when assessing GCP).

Corruptions (``x`` in [0, 1], output clipped to [0, 1]); ``p_s`` is the severity parameter
of the preset, ``"imagenet"`` (large images) / ``"cifar"`` (≤ 64 px, milder, as for
CIFAR-10-C):

===================  ===========================================  ===========================  =========================
name                 operation                                    imagenet p_1…p_5             cifar p_1…p_5
===================  ===========================================  ===========================  =========================
``gaussian_noise``   x + N(0, p²)                                 .08 .12 .18 .26 .38          .04 .06 .08 .09 .10
``shot_noise``       Poisson(p·x)/p                               60 25 12 5 3                 500 250 100 75 50
``gaussian_blur``    Gaussian filter, σ = p px (replicate pad)    1 2 3 4 6                    .4 .6 .7 .8 1
``contrast``         (x − m)·p + m, m = per-channel mean         .4 .3 .2 .1 .05              .75 .5 .4 .3 .15
``brightness``       HSV value V ← min(V + p, 1) (hue, sat. kept)  .1 .2 .3 .4 .5               .05 .1 .15 .2 .3
``jpeg``             JPEG quality p (see below)                   25 18 15 10 7                80 65 58 50 40
===================  ===========================================  ===========================  =========================

``jpeg`` is a JPEG-like quantisation computed in torch, not a codec: 8-bit rounding,
RGB → YCbCr (JFIF; images with C ≠ 3 treat every channel as luma), 8x8 block DCT-II
(replicate padding to a multiple of 8), division by the standard JPEG luminance /
chrominance tables scaled by the IJG quality rule (``S = 5000/q`` for q < 50, else
``200 − 2q``; ``Q = clamp(⌊(T·S + 50)/100⌋, 1, 255)``), rounding, dequantisation, inverse
DCT, back to RGB and 8-bit rounding. There is no chroma subsampling and no entropy
coding (lossless, irrelevant here), so it distorts slightly less than a real codec at the
same quality.

Only the two noises draw random numbers. With the same generator state (and device), the
output is bit-for-bit reproducible; CPU and CUDA generators produce different noise.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> noisy = corrupt(images, "gaussian_noise", 3, generator=g)         # images in [0, 1]
    >>> res = evaluate_corruptions(model, test_loader, mean=MEAN, std=STD)
    >>> res_gcp = evaluate_corruptions(gcp_model, test_loader, mean=MEAN, std=STD, baseline=res)
    >>> res_gcp["mce"], res_gcp["relative_mce"]
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthocond._checks import check_int, check_module

from .evaluate import evaluate_classifier

__all__ = [
    "CORRUPTIONS",
    "SEVERITY_PARAMETERS",
    "corrupt",
    "evaluate_corruptions",
    "format_corruption_report",
    "mean_corruption_error",
]

#: Names accepted by :func:`corrupt`.
#: Version of the corruption definitions; results of different versions are not comparable
#: (2: contrast around the per-channel mean, as ImageNet-C; 1 used the whole-image mean).
CORRUPTIONS_VERSION = 2
CORRUPTIONS = ("gaussian_noise", "shot_noise", "gaussian_blur", "contrast", "brightness", "jpeg")

#: Severity parameters p_1 … p_5 per preset and corruption (see the module docstring).
SEVERITY_PARAMETERS: dict[str, dict[str, tuple[float, ...]]] = {
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60.0, 25.0, 12.0, 5.0, 3.0),
        "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "jpeg": (25.0, 18.0, 15.0, 10.0, 7.0),
    },
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500.0, 250.0, 100.0, 75.0, 50.0),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "jpeg": (80.0, 65.0, 58.0, 50.0, 40.0),
    },
}

_PRESETS = ("auto", "imagenet", "cifar")

# Standard JPEG quantisation tables (ITU T.81 Annex K), row-major 8x8.
_JPEG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
_JPEG_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32  # fmt: skip

# JFIF RGB -> YCbCr (offset 128 on the chroma channels, in the 0..255 scale).
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)


# --------------------------------------------------------------------------- checks


def _check_images(images: Any) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor in [0, 1], got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or Inf")


def _check_name_severity(name: Any, severity: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in CORRUPTIONS:
        raise ValueError(f"name must be one of {CORRUPTIONS}, got {name!r}")
    if not isinstance(severity, int) or isinstance(severity, bool):
        raise TypeError(f"severity must be an int, got {type(severity).__name__}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")


def _channel_stats(value: Any, name: str, channels: int, like: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.ndim > 1 or (t.ndim == 1 and t.numel() not in (1, channels)):
        raise ValueError(f"{name} must be a float or {channels} per-channel values, got {value!r}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if name == "std" and not bool((t > 0).all()):
        raise ValueError(f"std must be > 0, got {value!r}")
    return t.to(device=like.device, dtype=like.dtype).reshape(1, -1, 1, 1)


def _resolve_preset(preset: Any, images: Tensor) -> str:
    if preset not in _PRESETS:
        raise ValueError(f"preset must be one of {_PRESETS}, got {preset!r}")
    if preset == "auto":
        return "cifar" if max(images.shape[-2:]) <= 64 else "imagenet"
    return preset


# --------------------------------------------------------------------------- corruptions


def _gaussian_noise(x: Tensor, p: float, g: torch.Generator | None) -> Tensor:
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return x + p * noise


def _shot_noise(x: Tensor, p: float, g: torch.Generator | None) -> Tensor:
    return torch.poisson(x * p, generator=g) / p


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.reshape(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def _contrast(x: Tensor, p: float) -> Tensor:
    m = x.mean(dim=(2, 3), keepdim=True)  # per channel, as ImageNet-C
    return (x - m) * p + m


def _brightness(x: Tensor, p: float) -> Tensor:
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + p).clamp(0.0, 1.0)
    scale = v_new / v.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(v > 0, x * scale, v_new.expand_as(x))


@torch.no_grad()
def _dct_matrix(dtype: torch.dtype, device: torch.device) -> Tensor:
    n = torch.arange(8, dtype=torch.float64)
    k = n.reshape(8, 1)
    d = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    return d.to(dtype=dtype, device=device)


def _quant_table(values: Sequence[int], quality: float, like: Tensor) -> Tensor:
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    t = torch.tensor(values, dtype=torch.float64)
    q = torch.floor((t * scale + 50.0) / 100.0).clamp(1.0, 255.0)
    return q.reshape(8, 8).to(dtype=like.dtype, device=like.device)


def _jpeg(x: Tensor, quality: float) -> Tensor:
    b, c, h, w = x.shape
    x = torch.round(x.clamp(0.0, 1.0) * 255.0)
    color = c == 3
    if color:
        m = torch.tensor(_RGB_TO_YCBCR, dtype=x.dtype, device=x.device)
        x = torch.einsum("ij,bjhw->bihw", m, x)
        x = x + torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device).reshape(
            1, 3, 1, 1
        )
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    hh, ww = x.shape[-2:]
    blocks = (x - 128.0).reshape(b, c, hh // 8, 8, ww // 8, 8)
    d = _dct_matrix(x.dtype, x.device)
    coef = torch.einsum("ki,bcyixj,lj->bcykxl", d, blocks, d)
    luma = _quant_table(_JPEG_LUMA, quality, x)
    if color:
        chroma = _quant_table(_JPEG_CHROMA, quality, x)
        table = torch.stack([luma, chroma, chroma])
    else:
        table = luma.expand(c, 8, 8)
    table = table.reshape(1, c, 1, 8, 1, 8)
    coef = torch.round(coef / table) * table
    blocks = torch.einsum("ki,bcykxl,lj->bcyixj", d, coef, d)
    x = (blocks + 128.0).reshape(b, c, hh, ww)[..., :h, :w]
    if color:
        x = x - torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device).reshape(
            1, 3, 1, 1
        )
        m_inv = torch.linalg.inv(torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64))
        x = torch.einsum("ij,bjhw->bihw", m_inv.to(dtype=x.dtype, device=x.device), x)
    return torch.round(x.clamp(0.0, 255.0)) / 255.0


def corrupt(
    images: Tensor,
    name: str,
    severity: int,
    *,
    generator: torch.Generator | None = None,
    mean: float | Sequence[float] | Tensor | None = None,
    std: float | Sequence[float] | Tensor | None = None,
    preset: str = "auto",
) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1…5) to a batch of images.

    Args:
        images (Tensor[B, C, H, W]): floating images in [0, 1], or normalised images
            ``(x − mean)/std`` when ``mean`` and ``std`` are given (they are un-normalised
            first and the output is normalised again).
        name: one of :data:`CORRUPTIONS`; severity: 1 (mild) … 5 (strong).
        generator: random source for the two noises (on the images' device); None uses the
            global RNG. The same generator state gives the same output.
        mean, std: per-channel normalisation (floats or C values), both or neither.
        preset: severity parameters, ``"imagenet"``, ``"cifar"`` or ``"auto"`` (default:
            ``"cifar"`` when max(H, W) <= 64, else ``"imagenet"``); table in the module
            docstring.

    The un-normalised images are clamped to [0, 1] before and after the corruption. The
    computation runs in float32 (float64 for float64 input); returns the input's dtype.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = corrupt(torch.rand(4, 3, 32, 32), "shot_noise", 5, generator=g)
    """
    _check_images(images)
    _check_name_severity(name, severity)
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together or not at all")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != images.device.type:
            raise ValueError(
                f"generator is on {generator.device} but images are on {images.device}; "
                "create the generator on the images' device"
            )
    p = SEVERITY_PARAMETERS[_resolve_preset(preset, images)][name][severity - 1]
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.detach().to(work)
    if mean is not None:
        m = _channel_stats(mean, "mean", x.shape[1], x)
        s = _channel_stats(std, "std", x.shape[1], x)
        x = x * s + m
    x = x.clamp(0.0, 1.0)
    if name == "gaussian_noise":
        y = _gaussian_noise(x, p, generator)
    elif name == "shot_noise":
        y = _shot_noise(x, p, generator)
    elif name == "gaussian_blur":
        y = _gaussian_blur(x, p)
    elif name == "contrast":
        y = _contrast(x, p)
    elif name == "brightness":
        y = _brightness(x, p)
    else:
        y = _jpeg(x, p)
    y = y.clamp(0.0, 1.0)
    if mean is not None:
        y = (y - m) / s
    return y.to(images.dtype)


# --------------------------------------------------------------------------- evaluation


def _corruption_seed(seed: int, name: str, severity: int) -> int:
    return (seed * 2**32 + zlib.crc32(f"{name}:{severity}".encode())) % 2**63


def _batches(data: Any, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        images, labels = data
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images and labels disagree on the batch size: {images.shape[0]} vs {labels.shape[0]}"
            )
        return [
            (images[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, images.shape[0], batch_size)
        ]
    if not isinstance(data, Iterable):
        raise TypeError(
            "data must be an (images, labels) pair of tensors or an iterable of (images, labels) "
            f"batches, got {type(data).__name__}"
        )
    return data


def _check_sequence(values: Any, name: str, allowed: Sequence[Any]) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name} must be a non-empty sequence, got {values!r}")
    out = tuple(values)
    bad = [v for v in out if v not in allowed or isinstance(v, bool)]
    if bad:
        raise ValueError(f"{name} must be drawn from {tuple(allowed)}, got {bad}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat entries, got {list(out)}")
    return out


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


@torch.no_grad()
def evaluate_corruptions(
    model: nn.Module,
    data: Any,
    *,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    mean: float | Sequence[float] | Tensor | None = None,
    std: float | Sequence[float] | Tensor | None = None,
    seed: int = 0,
    baseline: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    preset: str = "auto",
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Top-1 errors of ``model`` on clean and corrupted data; CE/mCE against a baseline.

    The model runs in eval mode under ``torch.no_grad()`` (every module's training flag and
    the meta-layers' covariance capture are restored afterwards). For each corruption c and
    severity s, each batch is corrupted by :func:`corrupt` with one generator per (c, s),
    seeded from ``(seed, c, s)`` and created on the data's device, so the result is
    deterministic for a fixed data order and does not depend on which other corruptions
    are evaluated.

    Args:
        model: classifier returning logits (B, classes).
        data: an ``(images, labels)`` pair of tensors (split into ``batch_size`` batches)
            or an iterable of ``(images, labels)`` batches (e.g. a ``DataLoader``, re-iterated
            once per (c, s) pass plus one clean pass: it must yield the same data each time).
        corruptions: subset of :data:`CORRUPTIONS` (default all six); severities: subset of
            1…5 (default all).
        mean, std: normalisation of the images as the model sees them (see :func:`corrupt`);
            None when the model takes [0, 1] images.
        seed: base seed of the corruption generators.
        baseline: an earlier result of this function (same corruptions and severities); adds
            ``ce``, ``mce``, ``relative_ce``, ``relative_mce`` (see
            :func:`mean_corruption_error`).
        preset: severity parameters (see :func:`corrupt`).
        device: where to run (default: the model's parameters' device).

    Returns a JSON-serialisable dict: ``clean_error`` (fraction), ``severities`` (list),
    ``errors`` ``{c: [E_{s,c} for s in severities]}`` (fractions), ``mean_errors`` ``{c:
    mean_s E_{s,c}}``, ``corruption_error`` (mean over all c, s), ``num_samples``, ``seed``,
    ``preset``, ``corruptions_version`` (:data:`CORRUPTIONS_VERSION`); plus the baseline keys.

    Example:
        >>> gap = evaluate_corruptions(gap_model, (x_test, y_test))
        >>> gcp = evaluate_corruptions(gcp_model, (x_test, y_test), baseline=gap)
        >>> print(format_corruption_report(gcp))
    """
    check_module(model)
    corruptions = _check_sequence(corruptions, "corruptions", CORRUPTIONS)
    severities = _check_sequence(severities, "severities", (1, 2, 3, 4, 5))
    check_int(seed, "seed", minimum=0)
    check_int(batch_size, "batch_size")
    if preset not in _PRESETS:
        raise ValueError(f"preset must be one of {_PRESETS}, got {preset!r}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together or not at all")
    batches = _batches(data, batch_size)
    dev = torch.device(device) if device is not None else _model_device(model)

    def run(name: str | None, severity: int) -> tuple[float, int]:
        gen: list[torch.Generator] = []  # one per pass, created on the data's device

        def prepare(x: Tensor) -> Tensor:
            _check_images(x)
            if name is None:
                return x
            if not gen:
                gen.append(torch.Generator(device=x.device))
                gen[0].manual_seed(_corruption_seed(seed, name, severity))
            return corrupt(x, name, severity, generator=gen[0], mean=mean, std=std, preset=preset)

        try:
            ev = evaluate_classifier(model, batches, device=dev, transform=prepare)
        except ValueError as exc:
            if "no samples" not in str(exc):
                raise
            raise ValueError(
                "data yielded no samples (a one-shot iterator? pass a DataLoader or an "
                "(images, labels) pair: the data is read once per corruption and severity)"
            ) from None
        return ev.error, ev.num_samples

    clean, n = run(None, 0)
    errors = {c: [run(c, s)[0] for s in severities] for c in corruptions}
    result: dict[str, Any] = {
        "clean_error": clean,
        "severities": list(severities),
        "errors": errors,
        "mean_errors": {c: sum(v) / len(v) for c, v in errors.items()},
        "corruption_error": sum(sum(v) for v in errors.values()) / (len(errors) * len(severities)),
        "num_samples": n,
        "seed": seed,
        "preset": preset,
        "corruptions_version": CORRUPTIONS_VERSION,
    }
    if baseline is not None:
        result.update(mean_corruption_error(result, baseline))
    return result


def mean_corruption_error(result: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Corruption errors of ``result`` relative to ``baseline`` (both from
    :func:`evaluate_corruptions`, or dicts with ``clean_error``, ``severities`` and
    ``errors``), in %:

    ``CE_c = 100·Σ_s E_{s,c} / Σ_s E^{base}_{s,c}``, ``mCE = mean_c CE_c``;
    relative ``CE_c = 100·Σ_s (E_{s,c} − E_clean) / Σ_s (E^{base}_{s,c} − E^{base}_clean)``,
    relative mCE = mean_c.

    A corruption whose baseline denominator is 0 (the baseline made no error, or no
    error beyond its clean error) has an undefined ratio: its entry is None, and so is the
    corresponding mean. Corruptions are those of ``result``; the baseline must cover them
    with the same severities.

    Returns ``{"ce": {c: %}, "mce": %, "relative_ce": {c: %}, "relative_mce": %}``.

    Example:
        >>> mean_corruption_error(
        ...     {"clean_error": 0.1, "severities": [1, 2], "errors": {"contrast": [0.2, 0.4]}},
        ...     {"clean_error": 0.2, "severities": [1, 2], "errors": {"contrast": [0.4, 0.8]}})
        {'ce': {'contrast': 50.0}, 'mce': 50.0, 'relative_ce': {'contrast': 50.0}, 'relative_mce': 50.0}
    """
    for what, r in (("result", result), ("baseline", baseline)):
        if not isinstance(r, Mapping) or not {"clean_error", "severities", "errors"} <= set(r):
            raise ValueError(f"{what} must be a mapping with clean_error, severities and errors")
    if list(result["severities"]) != list(baseline["severities"]):
        raise ValueError(
            f"severities differ: result {list(result['severities'])}, "
            f"baseline {list(baseline['severities'])}"
        )
    missing = [c for c in result["errors"] if c not in baseline["errors"]]
    if missing:
        raise ValueError(f"baseline lacks the corruptions {missing}")
    if "corruptions_version" in result or "corruptions_version" in baseline:
        versions = (result.get("corruptions_version", 1), baseline.get("corruptions_version", 1))
        if versions[0] != versions[1]:
            raise ValueError(
                f"corruptions_version differs: result {versions[0]}, baseline {versions[1]}; "
                "re-evaluate the baseline with this version of orthocond"
            )
    for key in ("preset", "seed"):  # other corruption parameters make the ratio meaningless
        if key in result and key in baseline and result[key] != baseline[key]:
            raise ValueError(
                f"{key} differs: result {result[key]!r}, baseline {baseline[key]!r}; CE compares "
                "errors under the same corruptions"
            )
    if not result["errors"]:
        raise ValueError("result has no corruption errors")
    ce: dict[str, float | None] = {}
    rel: dict[str, float | None] = {}
    clean, base_clean = float(result["clean_error"]), float(baseline["clean_error"])
    for c, errs in result["errors"].items():
        base = [float(v) for v in baseline["errors"][c]]
        errs = [float(v) for v in errs]
        if len(base) != len(errs):
            raise ValueError(f"corruption {c!r}: {len(errs)} errors vs {len(base)} in the baseline")
        den = sum(base)
        ce[c] = 100.0 * sum(errs) / den if den > 0 else None
        rel_den = sum(v - base_clean for v in base)
        rel[c] = 100.0 * sum(v - clean for v in errs) / rel_den if rel_den != 0 else None

    def mean(values: dict[str, float | None]) -> float | None:
        vals = list(values.values())
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    return {"ce": ce, "mce": mean(ce), "relative_ce": rel, "relative_mce": mean(rel)}


def format_corruption_report(result: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_corruptions` output: one row per corruption with
    its errors per severity (%), their mean and, when present, CE and relative CE."""
    if not isinstance(result, Mapping) or "errors" not in result or "severities" not in result:
        raise ValueError("result must come from evaluate_corruptions")
    sev = list(result["severities"])
    has_ce = "ce" in result

    def pct(v: float | None) -> str:
        return "   n/a" if v is None else f"{v:6.1f}"

    header = f"{'corruption':<16}" + "".join(f"  s={s:<4}" for s in sev) + "    mean"
    if has_ce:
        header += "      CE  rel.CE"
    lines = [header, "-" * len(header)]
    for c, errs in result["errors"].items():
        row = f"{c:<16}" + "".join(f"  {pct(100 * e)}" for e in errs)
        row += f"  {pct(100 * sum(errs) / len(errs))}"
        if has_ce:
            row += f"  {pct(result['ce'][c])}  {pct(result['relative_ce'][c])}"
        lines.append(row)
    lines.append(f"clean error {100 * result['clean_error']:.2f}%")
    if has_ce:
        lines.append(
            f"mCE {pct(result['mce']).strip()}%  relative mCE {pct(result['relative_mce']).strip()}%"
        )
    return "\n".join(lines)
