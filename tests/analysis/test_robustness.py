"""orthocond.analysis.robustness: on-the-fly corruptions, corruption errors and mCE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orthocond.analysis.robustness import (
    CORRUPTIONS,
    SEVERITY_PARAMETERS,
    _dct_matrix,
    _jpeg,
    corrupt,
    evaluate_corruptions,
    format_corruption_report,
    mean_corruption_error,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _images(b=3, c=3, size=40, seed=0, dtype=torch.float32):
    """Smooth images in [0, 1] with a little texture (size not a multiple of 8 on purpose)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, c, 5, 5, generator=g, dtype=torch.float64)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = 0.1 + 0.8 * x + 0.05 * torch.rand(b, c, size, size, generator=g, dtype=torch.float64)
    return x.clamp(0, 1).to(dtype)


def _rmse(a, b):
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def test_names_and_parameters():
    assert CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "gaussian_blur", "contrast", "brightness", "jpeg"
    )  # fmt: skip
    for preset in ("imagenet", "cifar"):
        assert set(SEVERITY_PARAMETERS[preset]) == set(CORRUPTIONS)
        assert all(len(v) == 5 for v in SEVERITY_PARAMETERS[preset].values())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_given_the_generator(name):
    x = _images()
    a = corrupt(x, name, 3, generator=torch.Generator().manual_seed(7))
    b = corrupt(x, name, 3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    c = corrupt(x, name, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, c) == (name not in ("gaussian_noise", "shot_noise"))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_distortion_grows_with_severity(name, preset):
    x = _images(seed=1)
    d = [
        _rmse(corrupt(x, name, s, generator=torch.Generator().manual_seed(0), preset=preset), x)
        for s in range(1, 6)
    ]
    assert d[0] > 1e-3
    assert all(b > a for a, b in zip(d, d[1:])), d


def test_auto_preset_follows_the_image_size():
    small, big = _images(b=1, size=32), _images(b=1, size=72)
    for x, preset in ((small, "cifar"), (big, "imagenet")):
        assert torch.equal(corrupt(x, "contrast", 2), corrupt(x, "contrast", 2, preset=preset))


def test_closed_forms():
    x = _images(dtype=torch.float64)
    # contrast: (x - m) p + m, m the per-image channel mean (ImageNet-C)
    p = SEVERITY_PARAMETERS["cifar"]["contrast"][3]
    m = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(corrupt(x, "contrast", 4, preset="cifar"), ((x - m) * p + m).clamp(0, 1))
    # gaussian noise: x + p·N(0, 1) from the same generator, clipped
    p = SEVERITY_PARAMETERS["imagenet"]["gaussian_noise"][1]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = corrupt(x, "gaussian_noise", 2, generator=torch.Generator().manual_seed(3), preset="imagenet")
    torch.testing.assert_close(got, (x + p * noise).clamp(0, 1))
    # shot noise: Poisson(p x)/p
    p = SEVERITY_PARAMETERS["cifar"]["shot_noise"][4]
    ref = torch.poisson(x * p, generator=torch.Generator().manual_seed(4)) / p
    got = corrupt(x, "shot_noise", 5, generator=torch.Generator().manual_seed(4), preset="cifar")
    torch.testing.assert_close(got, ref.clamp(0, 1))
    # brightness in HSV: V -> min(V + p, 1) with hue and saturation kept; black -> grey p
    # (p = 0.3: V = 0.4 -> 0.7, every channel x 1.75)
    px = torch.tensor([0.2, 0.4, 0.1], dtype=torch.float64).reshape(1, 3, 1, 1)
    img = torch.cat([px, torch.zeros_like(px)], dim=3)
    out = corrupt(img, "brightness", 3, preset="imagenet")
    torch.testing.assert_close(out[..., 0].flatten(), torch.tensor([0.35, 0.7, 0.175], dtype=torch.float64))
    torch.testing.assert_close(out[..., 1].flatten(), torch.full((3,), 0.3, dtype=torch.float64))


@pytest.mark.parametrize("severity", [1, 2])
def test_blur_matches_scipy(severity):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images(b=2, dtype=torch.float64)
    sigma = SEVERITY_PARAMETERS["imagenet"]["gaussian_blur"][severity - 1]
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=3.0)
    got = corrupt(x, "gaussian_blur", severity, preset="imagenet")
    np.testing.assert_allclose(got.numpy(), np.clip(ref, 0, 1), rtol=0, atol=1e-12)
    flat = torch.full((1, 3, 9, 9), 0.3, dtype=torch.float64)
    torch.testing.assert_close(corrupt(flat, "gaussian_blur", 5), flat)


def test_jpeg_transform():
    d = _dct_matrix(torch.float64, torch.device("cpu"))
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-14)
    x = _images(dtype=torch.float64)
    # quality 100: every quantiser step is 1, only rounding remains
    y = _jpeg(x, 100.0)
    assert float((y - x).abs().max()) < 3.0 / 255
    assert torch.equal(torch.round(y * 255), y * 255)  # 8-bit grid
    gray = _images(c=1, dtype=torch.float64)
    g = corrupt(gray, "jpeg", 5, preset="imagenet")
    assert g.shape == gray.shape and 0.005 < _rmse(g, gray) < 0.2


def test_normalised_input_round_trip():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = _images(dtype=torch.float64)
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    xn = (x - m) / s
    for name in ("gaussian_noise", "jpeg"):
        ref = (corrupt(x, name, 4, generator=torch.Generator().manual_seed(1)) - m) / s
        got = corrupt(xn, name, 4, generator=torch.Generator().manual_seed(1), mean=mean, std=std)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@CUDA
def test_cuda_generator_determinism():
    x = _images().cuda()
    a = corrupt(x, "shot_noise", 2, generator=torch.Generator("cuda").manual_seed(0))
    b = corrupt(x, "shot_noise", 2, generator=torch.Generator("cuda").manual_seed(0))
    assert a.is_cuda and torch.equal(a, b)
    with pytest.raises(ValueError, match="generator is on"):
        corrupt(x, "shot_noise", 2, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        (("fog", 1), {}, ValueError, "name must be one of"),
        (("contrast", 0), {}, ValueError, "severity must be in 1..5"),
        (("contrast", 6), {}, ValueError, "severity must be in 1..5"),
        (("contrast", True), {}, TypeError, "severity must be an int"),
        (("contrast", 1), {"mean": 0.5}, ValueError, "together"),
        (("contrast", 1), {"mean": 0.5, "std": 0.0}, ValueError, "std must be > 0"),
        (("contrast", 1), {"mean": [0.5, 0.5], "std": 0.2}, ValueError, "per-channel"),
        (("contrast", 1), {"preset": "svhn"}, ValueError, "preset"),
        (("shot_noise", 1), {"generator": 3}, TypeError, "generator"),
    ],
)
def test_corrupt_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        corrupt(_images(b=1, size=8), *args, **kwargs)


def test_corrupt_bad_images():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        corrupt(torch.rand(3, 8, 8), "contrast", 1)
    with pytest.raises(TypeError, match="floating"):
        corrupt(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "contrast", 1)
    with pytest.raises(ValueError, match="NaN"):
        corrupt(torch.full((1, 3, 8, 8), float("nan")), "contrast", 1)


# --------------------------------------------------------------------------- mCE


def test_mce_against_a_hand_computation():
    res = {"clean_error": 0.1, "severities": [1, 2], "errors": {"a": [0.2, 0.4], "b": [0.5, 0.5]}}
    base = {"clean_error": 0.2, "severities": [1, 2], "errors": {"a": [0.4, 0.4], "b": [0.25, 0.25]}}
    out = mean_corruption_error(res, base)
    # CE_a = (0.2 + 0.4)/(0.4 + 0.4) = 75 %, CE_b = 1.0/0.5 = 200 %
    assert out["ce"] == pytest.approx({"a": 75.0, "b": 200.0})
    assert out["mce"] == pytest.approx(137.5)
    # relative: a = (0.1 + 0.3)/(0.2 + 0.2) = 100 %, b = (0.4 + 0.4)/(0.05 + 0.05) = 800 %
    assert out["relative_ce"] == pytest.approx({"a": 100.0, "b": 800.0})
    assert out["relative_mce"] == pytest.approx(450.0)
    # undefined ratios are None, and so are their means
    flat = {"clean_error": 0.2, "severities": [1, 2], "errors": {"a": [0.2, 0.2], "b": [0.0, 0.0]}}
    out = mean_corruption_error(res, flat)
    assert out["ce"]["b"] is None and out["mce"] is None
    assert out["relative_ce"]["a"] is None and out["relative_mce"] is None
    with pytest.raises(ValueError, match="severities differ"):
        mean_corruption_error(res, dict(base, severities=[1, 3]))
    with pytest.raises(ValueError, match="lacks"):
        mean_corruption_error(res, dict(base, errors={"a": [0.4, 0.4]}))


def _classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4),
    )  # fmt: skip


def test_evaluate_corruptions_against_a_hand_computation():
    model = _classifier()
    x = _images(b=24, size=16, seed=2)
    model.train()
    model(x)  # non-trivial running statistics, model left in train mode
    with torch.no_grad():
        model.eval()
        labels = model(x).argmax(1)
        labels[:6] = (labels[:6] + 1) % 4  # 6 of 24 clean predictions are wrong
        model.train()
    res = evaluate_corruptions(
        model, (x, labels), corruptions=("contrast", "gaussian_noise", "jpeg"),
        severities=(1, 3, 5), batch_size=10,
    )  # fmt: skip
    assert model.training and all(m.training for m in model.modules())
    assert res["clean_error"] == pytest.approx(6 / 24)
    assert res["severities"] == [1, 3, 5] and res["num_samples"] == 24
    model.eval()
    with torch.no_grad():
        for name in ("contrast", "jpeg"):  # deterministic corruptions: batching is irrelevant
            hand = [float((model(corrupt(x, name, s)).argmax(1) != labels).double().mean()) for s in (1, 3, 5)]
            assert res["errors"][name] == pytest.approx(hand, abs=1e-12)
    assert res["mean_errors"]["contrast"] == pytest.approx(sum(res["errors"]["contrast"]) / 3)
    assert res["corruption_error"] == pytest.approx(np.mean(list(res["errors"].values())))
    # the corruptions do change predictions
    assert any(e != res["clean_error"] for v in res["errors"].values() for e in v)
    # same seed: same numbers; JSON-serialisable
    model.train()
    again = evaluate_corruptions(
        model, (x, labels), corruptions=("contrast", "gaussian_noise", "jpeg"),
        severities=(1, 3, 5), batch_size=10,
    )  # fmt: skip
    assert again == res
    json.dumps(res)


def test_evaluate_with_loader_normalisation_and_baseline():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = _images(b=16, size=16, seed=3)
    labels = torch.arange(16) % 4
    xn = (x - m) / s
    model, base_model = _classifier(1), _classifier(2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xn, labels), batch_size=8)
    names = ("gaussian_noise", "brightness")
    base = evaluate_corruptions(base_model, loader, corruptions=names, mean=mean, std=std, seed=5)
    res = evaluate_corruptions(
        model, loader, corruptions=names, mean=mean, std=std, seed=5, baseline=base
    )
    same = evaluate_corruptions(model, (xn, labels), corruptions=names, mean=mean, std=std, seed=5, batch_size=8)
    assert same["errors"] == res["errors"]  # a tensor pair in batches of 8 == the loader
    hand = mean_corruption_error(res, base)
    assert res["ce"] == hand["ce"] and res["mce"] == hand["mce"]
    for c in names:
        if res["ce"][c] is not None:
            assert res["ce"][c] == pytest.approx(100 * sum(res["errors"][c]) / sum(base["errors"][c]))
    text = format_corruption_report(res)
    assert "gaussian_noise" in text and "mCE" in text and "clean error" in text


def test_evaluate_bad_arguments():
    model = _classifier()
    x, y = _images(b=4, size=8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="corruptions must be drawn"):
        evaluate_corruptions(model, (x, y), corruptions=("fog",))
    with pytest.raises(ValueError, match="must not repeat"):
        evaluate_corruptions(model, (x, y), severities=(1, 1))
    with pytest.raises(ValueError, match="severities must be drawn"):
        evaluate_corruptions(model, (x, y), severities=(0,))
    with pytest.raises(ValueError, match="disagree"):
        evaluate_corruptions(model, (x, y[:3]))
    with pytest.raises(ValueError, match="no samples"):
        evaluate_corruptions(model, iter([(x, y)]), corruptions=("contrast",), severities=(1,))
    with pytest.raises(TypeError, match="model must be"):
        evaluate_corruptions("model", (x, y))
    with pytest.raises(ValueError, match="together"):
        evaluate_corruptions(model, (x, y), mean=0.5)


def test_contrast_leaves_a_uniform_colour_alone_and_ce_needs_the_same_corruptions():
    x = torch.tensor([0.6, 0.2, 0.2]).reshape(1, 3, 1, 1).expand(2, 3, 8, 8).contiguous()
    torch.testing.assert_close(corrupt(x, "contrast", 5), x)
    res = {"clean_error": 0.1, "severities": [1], "errors": {"contrast": [0.2]}, "preset": "cifar"}
    base = {**res, "preset": "imagenet"}
    with pytest.raises(ValueError, match="preset differs"):
        mean_corruption_error(res, base)


def test_results_of_other_corruption_versions_are_not_compared():
    res = {"clean_error": 0.1, "severities": [1], "errors": {"contrast": [0.2]},
           "corruptions_version": 2}
    old = {"clean_error": 0.2, "severities": [1], "errors": {"contrast": [0.4]}}  # version 1
    with pytest.raises(ValueError, match="corruptions_version differs"):
        mean_corruption_error(res, old)
    assert mean_corruption_error(res, {**old, "corruptions_version": 2})["mce"] == 50.0
