"""The benchmark cases of :mod:`orthocond.bench`: what is timed, its baselines and references.

A :class:`Case` is one suite at one size; it holds :class:`Subject` s, each a method under test
(``kind="method"``) or a plain-PyTorch baseline (``kind="baseline"``), with one zero-argument
callable per pass (``"fwd"``, ``"fwd+bwd"`` or ``"step"``) and, where an accuracy is defined, a
callable returning the relative Frobenius errors of its output and of its input gradient against
a float64 reference.

Suites and their sizes (``shape``):

* ``gcp``  (B, C, H, W): covariance pooling head, ``triu(cov(x)^{1/2})`` of a post-ReLU
  feature map (C = 256 at 14×14: more channels than positions, a singular covariance).
  Methods ``eig-exact``, ``eig-pade``, ``ns`` (iSQRT-COV, 5 iterations), ``mpa``;
  baselines ``eigh`` (plain ``torch.linalg.eigh`` autograd root in the input dtype) and
  ``bmm`` (one (B, C, C) @ (B, C, C) product, the matmul floor).
* ``zca``  (N, C, H, W): :class:`orthocond.nn.DecorrelatedBatchNorm2d` in train mode.
  Methods ``eig-exact``, ``eig-pade``, ``ns``, ``mpa``; baselines ``eigh`` (plain ZCA with
  ``torch.linalg.eigh`` autograd), ``bn2d`` (``nn.BatchNorm2d``), ``bmm`` ((1, C, C) @ (1, C, C)).
* ``nog``  (m, n): the polar factor U V^T of an (m, n) gradient. Methods ``svd``, ``ns``
  (:func:`orthocond.optim.nearest_orthogonal_gradient`, NOG's whole call); baselines ``svd``
  (bare ``torch.linalg.svd``), ``bmm`` (the Gram product G G^T) and ``muon-ns5`` (see polar).
* ``polar`` (m, n): the error-vs-time curve of the polar factor U V^T of one (m, n) gradient,
  timed round-robin: methods ``ns-K`` (:func:`orthocond.linalg.polar` ``method="ns"`` with K
  Polar Express steps on the Gram matrix, the first 3 in float64; K = 8 is the default),
  ``ns-K-f32gram`` (the same all in float32: faster, loses accuracy beyond κ ~ 1e2) and
  ``full-K`` (the steps on the full iterate, as ``polar`` ran them before); baselines ``svd``
  (:func:`~orthocond.linalg.polar` by SVD) and ``muon-ns5`` (``torch.optim.Muon``'s 5-step
  bfloat16 Newton–Schulz, not the polar factor: its singular values end in ~[0.6, 1.2]).
* ``step`` (B, R): one SGD training step of a GCP network on (B, 3, R, R) images. Baseline
  ``sgd``; methods ``nog-svd+olr`` and ``nog-ns+olr`` (:class:`optim.NOG` then
  :class:`optim.OLR` on the Pre-SVD weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from orthocond import linalg, optim
from orthocond.linalg.polar import _polar_ns
from orthocond.optim import NOG_METHODS

SUITES = ("gcp", "zca", "nog", "polar", "step")
PASSES = ("fwd", "fwd+bwd", "step")
SHAPE_NAMES = {
    "gcp": ("B", "C", "H", "W"),
    "zca": ("N", "C", "H", "W"),
    "nog": ("m", "n"),
    "polar": ("m", "n"),
    "step": ("B", "R"),
}
STEP_MODELS = ("auto", "tiny", "resnet50")
ZCA_EPS = 1e-5

# Sizes: GPU anchors of the issue; CPU defaults, the sizes of the side-by-side comparison with the
# published layers (whole CPU run ~45 s with 1 torch thread on 2 cores); --quick.
GPU_SIZES: dict[str, tuple[tuple[int, ...], ...]] = {
    "gcp": ((128, 256, 14, 14),),
    "zca": ((128, 64, 32, 32),),
    "nog": ((256, 2048), (512, 4608)),
    "polar": ((256, 2048),),
    "step": ((64, 224),),
}
CPU_SIZES: dict[str, tuple[tuple[int, ...], ...]] = {
    "gcp": ((16, 64, 14, 14), (32, 256, 14, 14)),
    "zca": ((64, 64, 16, 16),),
    "nog": ((64, 27), (64, 576), (256, 2304)),
    "polar": ((256, 2304),),
    "step": ((16, 32),),
}
QUICK_SIZES: dict[str, tuple[tuple[int, ...], ...]] = {
    "gcp": ((2, 8, 6, 6),),
    "zca": ((8, 6, 4, 4),),
    "nog": ((16, 40),),
    "polar": ((16, 40),),
    "step": ((2, 16),),
}


@dataclass(frozen=True)
class Target:
    """A goal for one method at one GPU size: median time, forward error, step overhead.

    ``check`` is True when every given bound holds (``max_overhead`` compares
    ``median / baseline - 1`` against the ``overhead_of`` baseline).
    """

    max_ms: float | None = None
    max_err: float | None = None
    max_overhead: float | None = None
    overhead_of: str | None = None
    passes: tuple[str, ...] = ("fwd+bwd",)

    def describe(self) -> str:
        parts = []
        if self.max_ms is not None:
            parts.append(f"<= {self.max_ms:g} ms")
        if self.max_err is not None:
            parts.append(f"err <= {self.max_err:g}")
        if self.max_overhead is not None:
            parts.append(f"+{100 * self.max_overhead:g} % vs {self.overhead_of}")
        return ", ".join(parts)

    def check(self, median_ms: float, fwd_err: float | None, ratios: dict[str, float]) -> bool:
        ok = math.isfinite(median_ms)
        if self.max_ms is not None:
            ok = ok and median_ms <= self.max_ms
        if self.max_err is not None:
            ok = ok and fwd_err is not None and fwd_err <= self.max_err
        if self.max_overhead is not None:
            ratio = ratios.get(str(self.overhead_of), math.nan)
            ok = ok and ratio - 1.0 <= self.max_overhead
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_ms": self.max_ms,
            "max_err": self.max_err,
            "max_overhead": self.max_overhead,
            "overhead_of": self.overhead_of,
            "passes": list(self.passes),
        }


_NOG_TARGET = Target(max_ms=1.0, max_err=1e-3, passes=("fwd",))
_STEP_TARGET = Target(max_overhead=0.02, overhead_of="sgd", passes=("step",))
#: Targets of the issue, keyed by (suite, shape) then method; they apply on CUDA in float32.
TARGETS: dict[tuple[str, tuple[int, ...]], dict[str, Target]] = {
    ("gcp", (128, 256, 14, 14)): {
        "ns": Target(max_ms=4.0),
        "eig-exact": Target(max_ms=40.0),
        "eig-pade": Target(max_ms=40.0),
    },
    ("zca", (128, 64, 32, 32)): {
        m: Target(max_ms=1.0) for m in ("eig-exact", "eig-pade", "ns", "mpa")
    },
    ("nog", (256, 2048)): {"svd": _NOG_TARGET, "ns": _NOG_TARGET},
    ("nog", (512, 4608)): {"svd": _NOG_TARGET, "ns": _NOG_TARGET},
    ("polar", (256, 2048)): {"ns-8": Target(max_err=1e-3, passes=("fwd",))},
    ("step", (64, 224)): {"nog-svd+olr": _STEP_TARGET, "nog-ns+olr": _STEP_TARGET},
}

# The matrix-function methods of the gcp and zca suites: name -> (linalg method, backward).
ROOT_METHODS: dict[str, tuple[str, str]] = {
    "eig-exact": ("eig", "exact"),
    "eig-pade": ("eig", "pade"),
    "ns": ("ns", "exact"),
    "mpa": ("mpa", "exact"),
}


@dataclass
class Subject:
    """One thing to time: ``run[pass]`` is a zero-argument callable, ``accuracy()`` returns
    ``(forward error, gradient error)`` (None where undefined)."""

    name: str
    kind: str
    run: dict[str, Callable[[], Any]]
    accuracy: Callable[[], tuple[float | None, float | None]] | None = None
    target: Target | None = None


@dataclass
class Case:
    suite: str
    shape: tuple[int, ...]
    label: str
    subjects: list[Subject] = field(default_factory=list)
    note: str = ""
    cleanup: Callable[[], None] | None = None
    #: time the subjects round-robin (one call each per round, the same number of rounds),
    #: so that clock drift cancels in ratios meant to resolve a few percent
    interleave: bool = False


def relative_error(out: Tensor, ref: Tensor) -> float:
    """Relative Frobenius error ``||out - ref|| / ||ref||`` in float64 (absolute when ``ref`` is
    zero or so small that a ratio would only measure rounding, e.g. a zero covariance)."""
    a = out.detach().to(device=ref.device, dtype=torch.float64)
    r = ref.detach().to(torch.float64)
    num = torch.linalg.vector_norm(a - r)
    den = torch.linalg.vector_norm(r)
    negligible = torch.finfo(out.dtype if out.is_floating_point() else torch.float32).tiny ** 0.5
    return float(num / den) if float(den) > negligible else float(num)


def _randn(shape: Sequence[int], gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Standard normal tensor drawn on the CPU (same values on every device), then moved."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _reference(fn: Callable[[Tensor], Tensor], x: Tensor, gy: Tensor) -> tuple[Tensor, Tensor]:
    """Output and input gradient (for upstream ``gy``) of ``fn`` in float64."""
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    out = fn(x64)
    (grad,) = torch.autograd.grad(out, [x64], gy.to(torch.float64))
    return out.detach(), grad.detach()


def _autograd_subject(
    name: str,
    kind: str,
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    gy: Tensor,
    params: Sequence[Tensor] = (),
    ref: tuple[Tensor, Tensor] | None = None,
    target: Target | None = None,
) -> Subject:
    """fwd (under no_grad) and fwd+bwd (gradient w.r.t. the input and ``params``) of ``fn(x)``."""
    xr = x.detach().requires_grad_(True)
    inputs = [xr, *params]

    def fwd() -> Any:
        with torch.no_grad():
            return fn(x)

    def fwd_bwd() -> Any:
        return torch.autograd.grad(fn(xr), inputs, gy, allow_unused=True)

    accuracy = None
    if ref is not None:
        ref_out, ref_grad = ref

        def accuracy() -> tuple[float | None, float | None]:
            out = fn(xr)
            (grad,) = torch.autograd.grad(out, [xr], gy)
            return relative_error(out, ref_out), relative_error(grad, ref_grad)

    return Subject(name, kind, {"fwd": fwd, "fwd+bwd": fwd_bwd}, accuracy, target)


def _forward_subject(
    name: str,
    kind: str,
    fn: Callable[[], Tensor],
    ref: Tensor | None = None,
    target: Target | None = None,
) -> Subject:
    accuracy = None
    if ref is not None:

        def accuracy() -> tuple[float | None, float | None]:
            return relative_error(fn(), ref), None

    return Subject(name, kind, {"fwd": fn}, accuracy, target)


def _bmm_subject(batch: int, n: int, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> Subject:
    A = _randn((batch, n, n), gen, device, dtype)
    B = _randn((batch, n, n), gen, device, dtype)
    return _forward_subject("bmm", "baseline", lambda: torch.bmm(A, B))


def _label(suite: str, shape: tuple[int, ...], prefix: str = "") -> str:
    if suite in ("nog", "polar"):
        return f"{shape[0]}x{shape[1]}"
    if suite == "step":
        return f"{prefix}B={shape[0]} {shape[1]}x{shape[1]}"
    a, b, h, w = shape
    n0, n1 = SHAPE_NAMES[suite][:2]
    return f"{n0}={a} {n1}={b} {h}x{w}"


# --------------------------------------------------------------------------- gcp


def _plain_eigh_root(cov: Tensor) -> Tensor:
    """Square root by plain ``torch.linalg.eigh`` with autograd, in ``cov``'s dtype."""
    evals, evecs = torch.linalg.eigh(cov)
    floor = torch.finfo(cov.dtype).tiny ** 0.5
    return (evecs * evals.clamp_min(floor).sqrt().unsqueeze(-2)) @ evecs.transpose(-2, -1)


def _plain_covariance(x: Tensor) -> Tensor:
    X = x.flatten(2)
    Xc = X - X.mean(dim=-1, keepdim=True)
    return Xc @ Xc.transpose(-2, -1) / X.shape[-1]


def build_gcp(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, targets: dict[str, Target]
) -> Case:
    from orthocond.nn import global_cov_pool, triu_vectorize

    B, C, H, W = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(_randn(shape, gen, device, dtype))  # a GCP head sees post-ReLU features
    rows, cols = torch.triu_indices(C, C, device=device)

    def reference(x64: Tensor) -> Tensor:
        cov = linalg.covariance(x64.flatten(2))
        return triu_vectorize(linalg.sqrtm(cov, "eig", backward="exact"))

    gy = _randn((B, C * (C + 1) // 2), gen, device, dtype)
    ref = _reference(reference, x, gy)
    case = Case("gcp", shape, _label("gcp", shape), interleave=True)
    for name, (method, backward) in ROOT_METHODS.items():

        def head(t: Tensor, method: str = method, backward: str = backward) -> Tensor:
            return global_cov_pool(t, method, 5 if method == "ns" else None, backward=backward)

        case.subjects.append(_autograd_subject(name, "method", head, x, gy, ref=ref, target=targets.get(name)))

    def plain(t: Tensor) -> Tensor:
        return _plain_eigh_root(_plain_covariance(t))[:, rows, cols]

    case.subjects.append(_autograd_subject("eigh", "baseline", plain, x, gy, ref=ref))
    case.subjects.append(_bmm_subject(B, C, gen, device, dtype))
    if H * W <= C:
        case.note = f"rank-deficient covariance (H*W={H * W} <= C={C})"
    return case


# --------------------------------------------------------------------------- zca


def _plain_zca(x: Tensor, eps: float) -> Tensor:
    """ZCA whitening of (N, C, H, W) with plain ``torch.linalg.eigh`` autograd (one group)."""
    N, C = x.shape[:2]
    X = x.transpose(0, 1).reshape(C, -1)
    Xc = X - X.mean(dim=1, keepdim=True)
    cov = Xc @ Xc.T / X.shape[1] + eps * torch.eye(C, dtype=x.dtype, device=x.device)
    evals, evecs = torch.linalg.eigh(cov)
    Wm = (evecs * evals.rsqrt().unsqueeze(-2)) @ evecs.T
    return (Wm @ Xc).reshape(C, N, *x.shape[2:]).transpose(0, 1)


def _reference_zca(x64: Tensor) -> Tensor:
    N, C = x64.shape[:2]
    X = x64.transpose(0, 1).reshape(C, -1)
    Xc = X - X.mean(dim=1, keepdim=True)
    Wm = linalg.inv_sqrtm(linalg.covariance(X), "eig", backward="exact", eps=ZCA_EPS)
    return (Wm @ Xc).reshape(C, N, *x64.shape[2:]).transpose(0, 1)


def build_zca(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, targets: dict[str, Target]
) -> Case:
    from orthocond.nn import DecorrelatedBatchNorm2d

    N, C, H, W = shape
    gen = torch.Generator().manual_seed(1)
    x = _randn(shape, gen, device, dtype)
    gy = _randn(shape, gen, device, dtype)
    ref = _reference(_reference_zca, x, gy)
    case = Case("zca", shape, _label("zca", shape), interleave=True)
    for name, (method, backward) in ROOT_METHODS.items():
        layer = DecorrelatedBatchNorm2d(C, eps=ZCA_EPS, method=method, backward=backward)
        layer = layer.to(device=device, dtype=dtype).train()
        case.subjects.append(
            _autograd_subject(name, "method", layer, x, gy, list(layer.parameters()), ref, targets.get(name))
        )
    case.subjects.append(
        _autograd_subject("eigh", "baseline", lambda t: _plain_zca(t, ZCA_EPS), x, gy, ref=ref)
    )
    bn = nn.BatchNorm2d(C).to(device=device, dtype=dtype).train()
    case.subjects.append(_autograd_subject("bn2d", "baseline", bn, x, gy, list(bn.parameters())))
    case.subjects.append(_bmm_subject(1, C, gen, device, dtype))
    return case


# --------------------------------------------------------------------------- nog


def build_nog(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, targets: dict[str, Target]
) -> Case:
    m, n = shape
    gen = torch.Generator().manual_seed(2)
    G = _randn(shape, gen, device, dtype)
    ref = linalg.polar(G.to(torch.float64), "svd")
    case = Case("nog", shape, _label("nog", shape), interleave=True)
    for name in NOG_METHODS:
        case.subjects.append(_forward_subject(
            name, "method", lambda name=name: optim.nearest_orthogonal_gradient(G, name), ref,
            targets.get(name),
        ))  # fmt: skip
    case.subjects.append(
        _forward_subject("svd", "baseline", lambda: torch.linalg.svd(G, full_matrices=False))
    )
    case.subjects.append(_forward_subject("bmm", "baseline", lambda: G @ G.transpose(-2, -1)))
    case.subjects.append(_forward_subject("muon-ns5", "baseline", lambda: muon_newton_schulz(G), ref))
    return case


# --------------------------------------------------------------------------- polar

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def muon_newton_schulz(G: Tensor, steps: int = 5) -> Tensor:
    """``torch.optim.Muon``'s orthogonalisation: 5 steps of one fixed quintic in bfloat16.

    Its coefficients maximise the slope at 0 and stop converging near 1 (singular values
    end in about [0.6, 1.2]): fast, not the polar factor. Calls torch's own function where
    this torch has it, else the same iteration written out.
    """
    muon = getattr(getattr(torch.optim, "_muon", None), "_zeropower_via_newtonschulz", None)
    if muon is not None:
        return muon(G, MUON_COEFFICIENTS, steps, 1e-7)
    a, b, c = MUON_COEFFICIENTS
    X = G.bfloat16()
    tall = X.shape[-2] > X.shape[-1]
    X = X.mT if tall else X
    X = X / (torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = X @ X.mT
        X = a * X + (b * gram + c * gram @ gram) @ X
    return X.mT if tall else X


def _full_size_polar_express(G: Tensor, steps: int) -> Tensor:
    """The Polar Express steps on the full (m, n) iterate (what ``polar(method="ns")`` ran before the Gram-space form)."""
    X = G.mT if G.shape[-2] > G.shape[-1] else G
    scale = torch.linalg.matrix_norm(X @ X.mT).sqrt().clamp_min(1e-30)[..., None, None]
    X = X / scale
    for a, b, c in linalg.polar_express_coefficients(steps):
        gram = X @ X.mT
        X = a * X + (b * gram + c * (gram @ gram)) @ X
    return X.mT if G.shape[-2] > G.shape[-1] else X


#: The polar-factor schedules of the ``polar`` suite: name -> (callable of G, what it is).
POLAR_SCHEDULES: dict[str, Callable[[Tensor], Tensor]] = {
    **{f"ns-{k}": (lambda G, k=k: linalg.polar(G, "ns", steps=k)) for k in (5, 6, 7, 8, 9)},
    **{f"ns-{k}-f32gram": (lambda G, k=k: _polar_ns(G, k, 0)) for k in (6, 8)},
    **{f"full-{k}": (lambda G, k=k: _full_size_polar_express(G, k)) for k in (8, 9)},
}


def build_polar(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, targets: dict[str, Target]
) -> Case:
    """The error-vs-time curve of the polar factor: every schedule on one gradient, round-robin."""
    gen = torch.Generator().manual_seed(3)
    G = _randn(shape, gen, device, dtype)
    ref = linalg.polar(G.to(torch.float64), "svd")
    case = Case("polar", shape, _label("polar", shape), interleave=True)
    for name, fn in POLAR_SCHEDULES.items():
        case.subjects.append(_forward_subject(name, "method", lambda fn=fn: fn(G), ref))
    case.subjects.append(_forward_subject("svd", "baseline", lambda: linalg.polar(G, "svd"), ref))
    case.subjects.append(_forward_subject("muon-ns5", "baseline", lambda: muon_newton_schulz(G), ref))
    return case


# --------------------------------------------------------------------------- step


def _tiny_gcp_net(num_classes: int) -> nn.Module:
    from orthocond.nn import GlobalCovPool

    head = GlobalCovPool(32, 16)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        head,
        nn.Linear(head.out_features, num_classes),
    )


def _pre_svd_weights(model: nn.Module) -> list[Tensor]:
    """Weights of the modules marked ``is_pre_svd`` (fresh models: never parametrized)."""
    return [m.weight for m in model.modules() if getattr(m, "is_pre_svd", False) is True]


def build_step(
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    targets: dict[str, Target],
    model_name: str = "auto",
) -> Case:
    B, R = shape
    if model_name == "auto":
        model_name = "resnet50" if device.type == "cuda" else "tiny"
    num_classes = 1000 if model_name == "resnet50" else 10
    if model_name == "resnet50":
        from orthocond.models import gcp_resnet50  # imports torchvision: only when needed

        model, described = gcp_resnet50(num_classes), "orthocond.models.gcp_resnet50 (iSQRT-COV)"
    else:
        model, described = _tiny_gcp_net(num_classes), "tiny conv net + GlobalCovPool(32, 16)"
    model = model.to(device=device, dtype=dtype).train()
    pre = _pre_svd_weights(model)
    if not pre:
        raise RuntimeError(f"the step model ({described}) has no Pre-SVD layer")
    pre_ids = {id(p) for p in pre}
    rest = [p for p in model.parameters() if id(p) not in pre_ids]
    gen = torch.Generator().manual_seed(3)
    x = _randn((B, 3, R, R), gen, device, dtype)
    y = torch.randint(0, num_classes, (B,), generator=gen).to(device)
    loss_fn = nn.CrossEntropyLoss()
    plugin_handles: list[Any] = []

    def make_step(method: str | None) -> Callable[[], Any]:
        opt = torch.optim.SGD(
            [{"params": rest}, {"params": pre}], lr=1e-3, momentum=0.9, weight_decay=1e-4
        )
        if method is not None:
            plugin_handles.append(optim.NOG(opt, pre, method=method))
            plugin_handles.append(optim.OLR(opt, pre))

        def step() -> Any:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return step

    label = _label("step", shape, "resnet50-gcp " if model_name == "resnet50" else "tiny ")
    case = Case("step", shape, label, note=f"model: {described}", interleave=True)
    case.subjects.append(Subject("sgd", "baseline", {"step": make_step(None)}))
    for method in NOG_METHODS:
        name = f"nog-{method}+olr"
        case.subjects.append(
            Subject(name, "method", {"step": make_step(method)}, None, targets.get(name))
        )

    def cleanup() -> None:
        for handle in plugin_handles:
            handle.remove()

    case.cleanup = cleanup
    return case


BUILDERS: dict[str, Callable[..., Case]] = {
    "gcp": build_gcp,
    "zca": build_zca,
    "nog": build_nog,
    "polar": build_polar,
    "step": build_step,
}
