"""Timing: medians of repeated runs (CUDA events on a GPU, ``perf_counter`` on the CPU), the
round-robin timing of several subjects, peak CUDA memory, and the TF32 switch."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from orthocond._checks import check_float, check_int

__all__ = ["Timing", "benchmark", "benchmark_interleaved", "peak_memory_mib", "timing_from_samples"]


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Statistics of repeated runs, in milliseconds: median, minimum, inter-quartile range."""

    median_ms: float
    min_ms: float
    iqr_ms: float
    repeat: int


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted ``values`` (numpy's default)."""
    pos = (len(values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def timing_from_samples(samples_ms: Sequence[float]) -> Timing:
    """:class:`Timing` of a non-empty list of per-run times in ms."""
    if len(samples_ms) == 0:
        raise ValueError("samples_ms must hold at least one time")
    s = sorted(float(v) for v in samples_ms)
    return Timing(_quantile(s, 0.5), s[0], _quantile(s, 0.75) - _quantile(s, 0.25), len(s))


def _as_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_counts(warmup: int, repeat: int, max_time_s: float | None) -> None:
    check_int(repeat, "repeat")
    check_int(warmup, "warmup", minimum=0)
    check_float(max_time_s, "max_time_s", low=0, low_open=True, allow_none=True)


def benchmark(
    fn: Callable[[], Any],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeat: int = 20,
    max_time_s: float | None = None,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed calls.

    On CUDA each call is bracketed by CUDA events on the current stream (device time, host
    syncs inside ``fn`` included) and the device is synchronised before and after; on the CPU
    each call is timed with ``time.perf_counter``. With ``max_time_s``, the last warm-up call
    (one-time start-up costs are paid by then; with ``warmup=0`` one extra untimed call)
    estimates the cost of one call and ``repeat`` is lowered so the timed calls take about
    ``max_time_s`` seconds (at least 3 calls, or ``repeat`` if smaller).

    Args:
        fn: zero-argument callable to time.
        device: where ``fn`` runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, torch.device).
        warmup: untimed calls first (default 3).
        repeat: timed calls (default 20).
        max_time_s: optional time budget of the timed calls, in seconds.

    Returns:
        :class:`Timing` (median, min, IQR in ms, number of timed calls).

    Example:
        >>> t = benchmark(lambda: torch.ones(64, 64) @ torch.ones(64, 64), warmup=1, repeat=5)
        >>> t.repeat, t.min_ms <= t.median_ms
        (5, True)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    # one callable timed "round-robin" is timed plainly: one timing loop serves both
    return benchmark_interleaved(
        [fn], device=device, warmup=warmup, repeat=repeat, max_time_s=max_time_s
    )[0]


def benchmark_interleaved(
    fns: Sequence[Callable[[], Any]],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeat: int = 20,
    max_time_s: float | None = None,
) -> list[Timing]:
    """Time several callables round-robin: ``warmup`` untimed calls of each, then ``repeat``
    rounds of one timed call of each, in order. Every callable gets the same number of
    samples, taken side by side, so slow drifts (GPU clocks, temperature) affect all alike
    and their ratios can resolve a few percent. ``max_time_s`` bounds the timed rounds as in
    :func:`benchmark`, from the last warm-up round.

    Returns:
        One :class:`Timing` per callable, in the order given.
    """
    if not fns or not all(callable(f) for f in fns):
        raise TypeError("fns must be a non-empty sequence of callables")
    _check_counts(warmup, repeat, max_time_s)
    dev = _as_device(device)
    _sync(dev)
    per_round = None
    for _ in range(max(warmup, 1 if max_time_s is not None else 0)):
        start = time.perf_counter()
        for fn in fns:
            fn()
        _sync(dev)
        per_round = time.perf_counter() - start
    if max_time_s is not None and per_round:
        repeat = min(repeat, max(3, int(max_time_s / per_round)))
    samples: list[list[float]] = [[] for _ in fns]
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            stream = torch.cuda.current_stream(dev)
            events = [
                [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in fns]
                for _ in range(repeat)
            ]
            for round_events in events:
                for fn, (begin, end) in zip(fns, round_events):
                    begin.record(stream)
                    fn()
                    end.record(stream)
            torch.cuda.synchronize(dev)
            for round_events in events:
                for k, (begin, end) in enumerate(round_events):
                    samples[k].append(begin.elapsed_time(end))
    else:
        for _ in range(repeat):
            for k, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                samples[k].append((time.perf_counter() - t0) * 1e3)
    return [timing_from_samples(s) for s in samples]


def peak_memory_mib(fn: Callable[[], Any], device: torch.device | str) -> float | None:
    """Peak CUDA memory one call of ``fn`` allocates beyond what was allocated before, in MiB.

    ``None`` on the CPU (PyTorch keeps no CPU allocator statistics). Resets the device's peak
    statistics.
    """
    dev = _as_device(device)
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    fn()
    torch.cuda.synchronize(dev)
    return (torch.cuda.max_memory_allocated(dev) - base) / 2**20


# --------------------------------------------------------------------------- results


def _legacy_tf32() -> tuple[bool, bool] | None:
    """(matmul, cuDNN) ``allow_tf32`` flags, or None when the process uses the newer
    ``fp32_precision`` API in a way the legacy getters refuse to read (torch >= 2.9)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # "mix of the legacy and new APIs"
        return None


def _precision_api() -> list[tuple[Any, str]]:
    """The ``fp32_precision`` knobs of torch >= 2.9: CUDA matmul, cuDNN conv and RNN."""
    knobs = [torch.backends.cuda.matmul]
    cudnn = torch.backends.cudnn
    knobs += [getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None)]
    return [(k, "fp32_precision") for k in knobs if k is not None and hasattr(k, "fp32_precision")]


def _tf32_state() -> dict[str, Any]:
    """Current TF32 settings, read through whichever API the process uses."""
    legacy = _legacy_tf32()
    if legacy is not None:
        mm, cv = ("tf32" if on else "ieee" for on in legacy)
    else:
        values = [str(getattr(k, a)) for k, a in _precision_api()]
        mm, cv = values[0], values[1] if len(values) > 1 else "ieee"
    return {"enabled": mm == "tf32", "matmul": mm, "cudnn_conv": cv}


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """Set TF32 for CUDA matmuls and cuDNN, restore the previous setting after.

    Through the legacy ``allow_tf32`` flags while the process uses them (they keep every
    getter working: setting only cuDNN's conv precision in the new API makes later reads of
    ``cudnn.allow_tf32`` raise), through ``fp32_precision`` (matmul, conv and RNN alike)
    when the process already chose the new API, which then refuses legacy reads.
    """
    legacy = _legacy_tf32()
    if legacy is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the flags are deprecated in favour of fp32_precision
            torch.backends.cuda.matmul.allow_tf32 = enabled
            torch.backends.cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy
        return
    knobs = _precision_api()
    old = [getattr(k, a) for k, a in knobs]
    for k, a in knobs:
        setattr(k, a, "tf32" if enabled else "ieee")
    try:
        yield
    finally:
        for (k, a), value in zip(knobs, old):
            setattr(k, a, value)

