"""Optimisation-landscape probes: loss Lipschitzness and gradient predictiveness.

CVPR 2020 (FORMULAS §8, after Santurkar et al., NeurIPS 2018). The model is split into a
stem f₀ and the rest f₁ (our ResNets: ``conv1 → bn1 → relu → maxpool`` | the rest, see
:func:`split_resnet`). On the current batch (x, t)::

    y = f₀(x) (detached),   L(y) = loss(f₁(y), t),   d = ∇_y L(y)
    η_i = η_min + i(η_max − η_min)/(N − 1), i = 0 … N − 1      (default [0.1, 75], N = 50)
    y_i = y + s·η_i·d                                           (s = +1 as in the reference)

and records

* the loss band ``[min_i L(y_i), max_i L(y_i)]`` (narrower = smoother loss, "loss
  Lipschitzness"),
* the gradient-predictiveness band ``[min_i, max_i] ‖∇L(y_i) − ∇L(y)‖₂`` (smaller = more
  predictive gradient),
* the effective β-smoothness ``max_i ‖∇L(y_i) − ∇L(y)‖₂ / ‖η_i·d‖₂`` (0 when d = 0).

Norms are over the whole batch tensor (Frobenius), the loss is the batch mean
(``loss_fn``'s own reduction), values are reported as Python floats (float64).

**The model is left unchanged.** A measurement runs the stem once and the rest N + 1 times
forward and backward, with gradients taken only with respect to y
(``torch.autograd.grad``: no parameter's ``.grad`` is touched). Around it every buffer of the
stem and the rest (BN running means/variances/covariances, ``num_batches_tracked``) is saved
and copied back afterwards, so the running statistics are frozen (this works for any layer
that keeps its state in buffers, ours included, without editing momenta); every module's
``training`` flag is restored; meta-layers' covariance capture
(``capture_covariance``/``captured_covariance``, used by
:class:`~orthocond.analysis.ConditionMonitor`) is switched off and restored; decorrelated
BN drops its cached eval whitening matrix (it is recomputed on the next eval forward); the
global RNG state (CPU and the input's device) is forked so that dropout-like layers do not
shift the training's random stream.

**Mode.** ``mode=None`` (default) measures in the mode the model is in: during training
that is train mode, where BN normalises with the batch statistics, i.e. the loss the
optimiser sees (the CVPR 2020 setting); ``"train"``/``"eval"`` force a mode for the
measurement only.

**Batching.** The N perturbed copies are stacked along the batch dim, ``chunk_size`` copies
per forward (default: as many as fit in 256 samples, at least 1; lower it when memory is
tight). In train mode BN layers would then normalise over all the stacked copies
together; so, while stacked, every
``nn.BatchNorm*`` (and ``SyncBatchNorm``) and decorrelated BN layer that uses batch
statistics gets a temporary forward hook that recomputes its output with each copy's own
batch statistics (the copies are folded into the channel dim: ``(K·B, C, …) → (B, K·C, …)``,
one ``F.batch_norm`` call, or the decorrelated BN's own ``whiten_batch`` with K·G groups), which equals
evaluating the copies one by one. Other layers that mix samples in train mode are not
known to the probe: use ``chunk_size=1`` for them (one copy per forward, exact for any
model). Synchronised BN layers are hooked with local statistics; under DDP run the probe on
every process (their stacked forward still all-reduces) or on the unwrapped module.

Example:
    >>> model = gcp_resnet18(num_classes=10, width=8, reduced_channels=16, cifar_stem=True)
    >>> probe = LandscapeProbe(model, every=500)            # splits the ResNet itself
    >>> for t, (x, y) in enumerate(loader):
    ...     probe.maybe_measure(x, y, step=t)               # before or after the update
    ...     train_step(x, y)
    >>> plot_landscape({"GCP": probe.history, "GAP": other.history}, "landscape.png")
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from orthocond._checks import check_float, check_int, check_module
from orthocond.nn.meta import meta_layer_mode
from orthocond.nn.whitening import _DecorrelatedBatchNorm

__all__ = [
    "LandscapeProbe",
    "LandscapeRecord",
    "measure_landscape",
    "plot_landscape",
    "split_resnet",
]

#: Default step-size range for ResNets (CVPR 2020; MobileNetV2 used [0.045, 1.5]).
DEFAULT_ETA_RANGE = (0.1, 75.0)
DEFAULT_NUM_STEPS = 50
#: Default number of samples (copies × batch) per stacked forward.
DEFAULT_MAX_SAMPLES = 256


# --------------------------------------------------------------------------- splitting


class _ResNetRest(nn.Module):
    """``layer1 → … → layer4 → head (or avgpool + flatten) → fc`` of a ResNet, sharing its
    modules (no copies)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.layer1, self.layer2 = model.layer1, model.layer2
        self.layer3, self.layer4 = model.layer3, model.layer4
        if hasattr(model, "head"):
            self.pool: nn.Module = model.head
        else:
            self.pool = nn.Sequential(model.avgpool, nn.Flatten(1))
        self.fc = model.fc

    def forward(self, y: Tensor) -> Tensor:
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        return self.fc(self.pool(y))


def split_resnet(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Split a ResNet into the stem and the rest, sharing its modules.

    Works for :class:`orthocond.models.ResNet` (``gcp_resnet*``, ``cifar_resnet*``) and
    torchvision's ResNets: stem = ``conv1 → bn1 → relu → maxpool`` (an ``nn.Sequential``;
    our CIFAR models have ``nn.Identity`` as maxpool), rest = ``layer1 … layer4 → head →
    fc`` (torchvision: ``avgpool → flatten → fc``). ``rest(stem(x))`` equals ``model(x)``;
    both parts hold the model's own modules, so they see its later updates.

    Example:
        >>> stem, rest = split_resnet(gcp_resnet18(width=8, reduced_channels=16))
    """
    check_module(model)
    needed = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "fc"]
    missing = [n for n in needed if not hasattr(model, n)]
    if not hasattr(model, "head") and not hasattr(model, "avgpool"):
        missing.append("head or avgpool")
    if missing:
        raise ValueError(
            f"split_resnet needs a ResNet with attributes {needed} and head/avgpool; "
            f"{type(model).__name__} lacks {missing}. Pass (stem, rest) modules instead."
        )
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return stem, _ResNetRest(model)


# --------------------------------------------------------------------------- records


@dataclass
class LandscapeRecord:
    """One landscape measurement (all floats are float64 values).

    Attributes:
        step: training iteration it was taken at (None when not given).
        loss: L(y) at the unperturbed stem output; grad_norm: ‖d‖₂ = ‖∇_y L(y)‖₂.
        loss_min, loss_max: the loss band min/max_i L(y_i).
        grad_diff_min, grad_diff_max: the gradient-predictiveness band
            min/max_i ‖∇L(y_i) − ∇L(y)‖₂.
        beta: effective β-smoothness max_i ‖∇L(y_i) − ∇L(y)‖₂ / ‖η_i d‖₂ (0 when d = 0).
        etas, losses, grad_diffs: the N step sizes and the per-step values.
    """

    step: int | None
    loss: float
    grad_norm: float
    loss_min: float
    loss_max: float
    grad_diff_min: float
    grad_diff_max: float
    beta: float
    etas: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_diffs: list[float] = field(default_factory=list)

    @property
    def loss_band(self) -> tuple[float, float]:
        """``(loss_min, loss_max)``."""
        return self.loss_min, self.loss_max

    @property
    def grad_band(self) -> tuple[float, float]:
        """``(grad_diff_min, grad_diff_max)``."""
        return self.grad_diff_min, self.grad_diff_max

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable; infinities stay floats)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LandscapeRecord:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a mapping, got {type(d).__name__}")
        names = [f for f in cls.__dataclass_fields__]
        missing = [n for n in names[:8] if n not in d]
        if missing:
            raise ValueError(f"landscape record is missing {missing}")
        return cls(**{n: d[n] for n in names if n in d})


def _as_record(r: Any) -> LandscapeRecord:
    if isinstance(r, LandscapeRecord):
        return r
    return LandscapeRecord.from_dict(r)


# --------------------------------------------------------------------------- state guard


def _unique_modules(modules: Sequence[nn.Module]) -> list[nn.Module]:
    seen: dict[int, nn.Module] = {}
    for root in modules:
        for m in root.modules():
            seen.setdefault(id(m), m)
    return list(seen.values())


def _rng_devices(device: torch.device) -> tuple[list[Any], str | None]:
    """Devices whose RNG ``fork_rng`` saves besides the CPU's: the input's CUDA device."""
    if device.type != "cuda":
        return [], None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return [index], "cuda"


@contextlib.contextmanager
def _frozen(modules: Sequence[nn.Module], mode: str | None, device: torch.device) -> Iterator[None]:
    """Save the buffers of ``modules``; inside :func:`~orthocond.nn.meta_layer_mode` (capture
    off, ``mode`` set) and a forked RNG; restore all."""
    mods = _unique_modules(modules)
    buffers = [
        (m, name, b.detach().clone())
        for m in mods
        for name, b in m._buffers.items()
        if b is not None
    ]
    devices, device_type = _rng_devices(device)
    training = None if mode is None else mode == "train"
    try:
        with meta_layer_mode(list(modules), training=training), torch.random.fork_rng(
            devices=devices, device_type=device_type
        ):
            yield
    finally:
        with torch.no_grad():
            for m, name, saved in buffers:
                current = m._buffers.get(name)
                if current is not None and current.shape == saved.shape:
                    current.copy_(saved)
                else:
                    m._buffers[name] = saved


# --------------------------------------------------------------------------- per-copy BN


def _fold(x: Tensor, copies: int) -> Tensor:
    """(K·B, C, *s) -> (B, K·C, *s): copy k's channels at k·C … (k+1)·C − 1."""
    b = x.shape[0] // copies
    x = x.reshape(copies, b, *x.shape[1:]).transpose(0, 1)
    return x.reshape(b, copies * x.shape[2], *x.shape[3:])


def _unfold(y: Tensor, copies: int) -> Tensor:
    """Inverse of :func:`_fold`."""
    b, c = y.shape[0], y.shape[1] // copies
    y = y.reshape(b, copies, c, *y.shape[2:]).transpose(0, 1)
    return y.reshape(copies * b, c, *y.shape[3:])


def _repeat(p: Tensor | None, copies: int) -> Tensor | None:
    return None if p is None else p.repeat(copies)


def _uses_batch_stats(m: nn.Module) -> bool:
    return bool(m.training or not m.track_running_stats)


def _per_copy_hook(copies: int) -> Callable[[nn.Module, tuple[Any, ...], Any], Tensor]:
    def hook(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> Tensor:
        x = _fold(inputs[0], copies)
        if isinstance(m, _DecorrelatedBatchNorm):
            y = m.whiten_batch(x, copies)  # the layer's own ZCA core, K·G groups
        else:
            y = F.batch_norm(
                x, None, None, _repeat(m.weight, copies), _repeat(m.bias, copies),
                training=True, momentum=0.0, eps=m.eps,
            )  # fmt: skip
        return _unfold(y, copies).to(output.dtype)

    return hook


@contextlib.contextmanager
def _per_copy_statistics(module: nn.Module, copies: int) -> Iterator[None]:
    handles = []
    if copies > 1:
        for m in module.modules():
            if isinstance(m, (_BatchNorm, _DecorrelatedBatchNorm)) and _uses_batch_stats(m):
                handles.append(m.register_forward_hook(_per_copy_hook(copies)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- measurement


def _resolve_etas(
    etas: Sequence[float] | Tensor | None, eta_range: Sequence[float], num_steps: int
) -> list[float]:
    if etas is not None:
        values = etas.tolist() if isinstance(etas, Tensor) else list(etas)
        if not values:
            raise ValueError("etas must not be empty")
        return [check_float(v, "etas", low=0, low_open=True) for v in values]
    check_int(num_steps, "num_steps")
    if len(eta_range) != 2:
        raise ValueError(f"eta_range must be (eta_min, eta_max), got {eta_range!r}")
    lo, hi = (float(v) for v in eta_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"eta_range must satisfy 0 < eta_min <= eta_max < inf, got {eta_range!r}")
    if num_steps == 1:
        return [lo]
    return [lo + i * (hi - lo) / (num_steps - 1) for i in range(num_steps)]


def _check_options(mode: Any, sign: Any, chunk_size: Any) -> None:
    if mode not in (None, "train", "eval"):
        raise ValueError(f"mode must be None, 'train' or 'eval', got {mode!r}")
    if sign not in (1, -1) or isinstance(sign, bool):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    check_int(chunk_size, "chunk_size", allow_none=True)


def _scalar_loss(loss_fn: Callable[..., Tensor], out: Tensor, target: Any) -> Tensor:
    loss = loss_fn(out, target)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor (use a mean or sum reduction)")
    return loss.reshape(())


def measure_landscape(
    stem: nn.Module,
    rest: nn.Module,
    x: Tensor,
    target: Any,
    *,
    loss_fn: Callable[..., Tensor] = F.cross_entropy,
    eta_range: Sequence[float] = DEFAULT_ETA_RANGE,
    num_steps: int = DEFAULT_NUM_STEPS,
    etas: Sequence[float] | Tensor | None = None,
    sign: int = 1,
    mode: str | None = None,
    chunk_size: int | None = None,
    step: int | None = None,
) -> LandscapeRecord:
    """Loss band, gradient-predictiveness band and β-smoothness at the stem output.

    See the module docstring for the definitions, the state guarantees and the batching.

    Args:
        stem, rest: the split model (``rest(stem(x))`` is the model's output), e.g. from
            :func:`split_resnet`.
        x (Tensor[B, ...]): input batch; target: what ``loss_fn`` takes as its second
            argument (class indices for the default).
        loss_fn: ``loss_fn(output, target) -> scalar`` (default ``F.cross_entropy``, the batch
            mean).
        eta_range: (η_min, η_max) (default (0.1, 75), the ResNet setting); num_steps: N
            (default 50); etas: explicit step sizes (> 0) instead of the linspace.
        sign: +1 (default, y + η d as in the reference code) or −1 (descent, y − η d).
        mode: None (the model's current mode), ``"train"`` or ``"eval"``.
        chunk_size: copies per stacked forward (default ``max(1, 256 // B)``; 1 = one copy
            per forward).
        step: stored in the record.

    Returns a :class:`LandscapeRecord`.

    Example:
        >>> stem, rest = split_resnet(model)
        >>> rec = measure_landscape(stem, rest, x, labels)
        >>> rec.loss_band, rec.grad_band, rec.beta
    """
    check_module(stem, "stem")
    check_module(rest, "rest")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a non-empty batch dim, got shape {tuple(x.shape)}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable")
    _check_options(mode, sign, chunk_size)
    eta_list = _resolve_etas(etas, eta_range, num_steps)

    with _frozen([stem, rest], mode, x.device):
        with torch.no_grad():
            y = stem(x)
        if not isinstance(y, Tensor) or not y.is_floating_point() or y.ndim < 1:
            raise ValueError("stem must return a floating-point tensor with a batch dim")
        y = y.detach().clone()
        b = y.shape[0]
        y0 = y.clone().requires_grad_(True)
        loss0 = _scalar_loss(loss_fn, rest(y0), target)
        (d,) = torch.autograd.grad(loss0, y0)
        d = d.detach()
        d_norm = float(d.double().norm())
        k_max = chunk_size if chunk_size is not None else max(1, DEFAULT_MAX_SAMPLES // b)
        losses: list[float] = []
        diffs: list[float] = []
        for start in range(0, len(eta_list), k_max):
            chunk = eta_list[start : start + k_max]
            k = len(chunk)
            eta = torch.tensor(chunk, dtype=y.dtype, device=y.device)
            eta = eta.reshape(k, *([1] * y.ndim))
            yk = (y.unsqueeze(0) + sign * eta * d.unsqueeze(0)).reshape(k * b, *y.shape[1:])
            yk.requires_grad_(True)
            with _per_copy_statistics(rest, k):
                out = rest(yk)
            out = out.reshape(k, b, *out.shape[1:])
            chunk_losses = torch.stack([_scalar_loss(loss_fn, out[i], target) for i in range(k)])
            (g,) = torch.autograd.grad(chunk_losses.sum(), yk)
            g = g.reshape(k, *y.shape)
            diff = (g.double() - d.double().unsqueeze(0)).flatten(1).norm(dim=1)
            losses.extend(chunk_losses.detach().double().tolist())
            diffs.extend(diff.tolist())
    ratios = [df / (e * d_norm) if d_norm > 0 else 0.0 for df, e in zip(diffs, eta_list)]
    return LandscapeRecord(
        step=step,
        loss=float(loss0.detach()),
        grad_norm=d_norm,
        loss_min=min(losses),
        loss_max=max(losses),
        grad_diff_min=min(diffs),
        grad_diff_max=max(diffs),
        beta=max(ratios),
        etas=eta_list,
        losses=losses,
        grad_diffs=diffs,
    )


class LandscapeProbe:
    """Take a :func:`measure_landscape` record every ``every`` training iterations.

    Args:
        model: a ResNet to split with :func:`split_resnet`, or a ``(stem, rest)`` pair.
        every: measure when ``step % every == 0`` (default 500, the CVPR 2020 setting).
        **options: ``loss_fn``, ``eta_range``, ``num_steps``, ``etas``, ``sign``, ``mode``,
            ``chunk_size`` for :func:`measure_landscape` (checked here).

    Attributes:
        history (list[LandscapeRecord]): the records, in order.

    ``state_dict()``/``load_state_dict()`` carry ``every`` and the history (as dicts) so a
    resumed run keeps its curve.

    Example:
        >>> probe = LandscapeProbe(model, every=100)
        >>> rec = probe.maybe_measure(x, y, step=global_step)   # None unless due
    """

    _OPTIONS = ("loss_fn", "eta_range", "num_steps", "etas", "sign", "mode", "chunk_size")

    def __init__(
        self,
        model: nn.Module | tuple[nn.Module, nn.Module],
        every: int = 500,
        **options: Any,
    ) -> None:
        if isinstance(model, tuple):
            if len(model) != 2:
                raise ValueError(f"expected a (stem, rest) pair, got {len(model)} items")
            stem, rest = model
            check_module(stem, "stem")
            check_module(rest, "rest")
        else:
            stem, rest = split_resnet(model)
        check_int(every, "every")
        unknown = sorted(set(options) - set(self._OPTIONS))
        if unknown:
            raise TypeError(f"unknown options {unknown}; expected some of {list(self._OPTIONS)}")
        _check_options(options.get("mode"), options.get("sign", 1), options.get("chunk_size"))
        _resolve_etas(
            options.get("etas"),
            options.get("eta_range", DEFAULT_ETA_RANGE),
            options.get("num_steps", DEFAULT_NUM_STEPS),
        )
        if "loss_fn" in options and not callable(options["loss_fn"]):
            raise TypeError("loss_fn must be callable")
        self.stem, self.rest = stem, rest
        self.every = every
        self.options = options
        self.history: list[LandscapeRecord] = []

    def due(self, step: int) -> bool:
        """Whether :meth:`maybe_measure` would measure at ``step``."""
        check_int(step, "step", minimum=0)
        return step % self.every == 0

    def measure(self, x: Tensor, target: Any, step: int | None = None) -> LandscapeRecord:
        """Measure now, append to :attr:`history`, return the record."""
        rec = measure_landscape(self.stem, self.rest, x, target, step=step, **self.options)
        self.history.append(rec)
        return rec

    def maybe_measure(self, x: Tensor, target: Any, step: int) -> LandscapeRecord | None:
        """:meth:`measure` if ``step % every == 0``, else None."""
        return self.measure(x, target, step) if self.due(step) else None

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "history": [r.to_dict() for r in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "history" not in state or "every" not in state:
            raise ValueError("state must be a mapping with keys 'every' and 'history'")
        every = state["every"]
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"state['every'] must be an int >= 1, got {every!r}")
        history = [_as_record(r) for r in state["history"]]
        self.every = every
        self.history = history


# --------------------------------------------------------------------------- plotting


def plot_landscape(
    histories: Mapping[str, Sequence[LandscapeRecord | Mapping[str, Any]]],
    path: Union[str, os.PathLike],
    *,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Draw the landscape bands of several runs over training, side by side.

    Three panels, one colour per run: (a) loss landscape, the band
    ``[loss_min, loss_max]`` shaded against the step; (b) gradient predictiveness, the band
    ``[grad_diff_min, grad_diff_max]``; (c) effective β-smoothness (a line). Records without
    a step are placed at their index.

    Args:
        histories: ``{run label: records}``; records are :class:`LandscapeRecord` or their
            :meth:`~LandscapeRecord.to_dict` dicts (e.g. read back from JSON).
        path: output image (format from the suffix, e.g. ``.png``, ``.pdf``).

    Needs matplotlib (``pip install orthocond[cli]``); uses the Agg canvas directly, so
    the global pyplot backend is untouched. Returns the path.

    Example:
        >>> plot_landscape({"GAP": gap_probe.history, "GCP": gcp_probe.history}, "land.png")
    """
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError("histories must be a non-empty mapping {label: records}")
    runs: dict[str, list[LandscapeRecord]] = {}
    for label, records in histories.items():
        recs = [_as_record(r) for r in records]
        if not recs:
            raise ValueError(f"run {label!r} has no landscape records")
        runs[str(label)] = recs
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_landscape needs matplotlib: pip install 'orthocond[cli]'") from exc

    fig = Figure(figsize=(15, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for (label, recs), color in zip(runs.items(), colors):
        steps = [r.step if r.step is not None else i for i, r in enumerate(recs)]
        axes[0].fill_between(
            steps, [r.loss_min for r in recs], [r.loss_max for r in recs],
            color=color, alpha=0.35, label=label, linewidth=0,
        )  # fmt: skip
        axes[0].plot(steps, [r.loss_min for r in recs], color=color, linewidth=0.8)
        axes[0].plot(steps, [r.loss_max for r in recs], color=color, linewidth=0.8)
        axes[1].fill_between(
            steps, [r.grad_diff_min for r in recs], [r.grad_diff_max for r in recs],
            color=color, alpha=0.35, label=label, linewidth=0,
        )  # fmt: skip
        axes[1].plot(steps, [r.grad_diff_max for r in recs], color=color, linewidth=0.8)
        axes[2].plot(steps, [r.beta for r in recs], color=color, label=label, marker=".")
    axes[0].set_title("loss landscape: min/max L(y + η d)")
    axes[1].set_title("gradient predictiveness: ‖∇L(y + η d) − ∇L(y)‖")
    axes[2].set_title("effective β-smoothness")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("ℓ2 distance")
    axes[2].set_ylabel("β")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
