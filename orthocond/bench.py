"""``orthocond bench``: time every meta-layer and NOG method against plain-PyTorch baselines.

For each suite (``gcp``, ``zca``, ``nog``, ``step``; see :mod:`orthocond._bench_cases`) and
size, every method and baseline is timed forward and forward+backward (``step``: one whole
training step), after warm-up, as the median of repeated runs: CUDA events on a GPU,
``time.perf_counter`` on the CPU. Each row reports

* the median, minimum and inter-quartile range in ms;
* ``x <baseline>``: median / the baseline's median in the same case, for every baseline of
  that case (same pass when the baseline was timed in that pass, else its forward: ``bmm``
  and ``svd`` are forward-only floors);
* the relative Frobenius error of the output and of the input gradient against a float64
  reference (eigendecomposition with the exact Daleckii–Krein gradient; ``nog``: the float64
  SVD polar factor), where defined;
* the peak extra CUDA memory of one call in MiB (``None`` on the CPU);
* on CUDA in float32 at the issue's anchor sizes, the target and whether it is met.

Usage::

    python -m orthocond.bench [--device auto|cpu|cuda] [--suite all|gcp|zca|nog|step]
        [--size [SUITE:]AxB...] [--dtype float32|float64] [--tf32] [--repeat N] [--warmup N]
        [--max-time S] [--step-model auto|tiny|resnet50] [--json PATH] [--quick]

``--size`` replaces a suite's default sizes (repeatable; ``gcp:128x256x14x14``, ``zca:NxCxHxW``,
``nog:MxN``, ``step:BxR``; the ``SUITE:`` prefix may be left out with a single ``--suite``).

Example:
    >>> from orthocond.bench import run_bench
    >>> report = run_bench(["nog"], device="cpu", quick=True)  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from . import __version__
from ._argtypes import non_negative_int, positive_float, positive_int
from ._bench_cases import (
    BUILDERS,
    CPU_SIZES,
    GPU_SIZES,
    PASSES,
    QUICK_SIZES,
    SHAPE_NAMES,
    STEP_MODELS,
    SUITES,
    TARGETS,
    Case,
    Subject,
    Target,
    relative_error,
)

__all__ = [
    "CPU_SIZES",
    "GPU_SIZES",
    "PASSES",
    "QUICK_SIZES",
    "SUITES",
    "TARGETS",
    "Report",
    "Result",
    "Target",
    "Timing",
    "benchmark",
    "benchmark_interleaved",
    "main",
    "parse_size",
    "peak_memory_mib",
    "relative_error",
    "run_bench",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise ValueError(f"repeat must be a positive int, got {repeat!r}")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    if max_time_s is not None and (
        not isinstance(max_time_s, (int, float)) or isinstance(max_time_s, bool) or not max_time_s > 0
    ):
        raise ValueError(f"max_time_s must be None or a positive number of seconds, got {max_time_s!r}")


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


@dataclass
class Result:
    """One row: a method or baseline of one case in one pass."""

    suite: str
    case: str
    shape: tuple[int, ...]
    method: str
    kind: str
    pass_: str
    timing: Timing | None
    ratios: dict[str, float] = field(default_factory=dict)
    fwd_err: float | None = None
    grad_err: float | None = None
    peak_mib: float | None = None
    target: Target | None = None
    met: bool | None = None
    note: str = ""

    @property
    def median_ms(self) -> float:
        return self.timing.median_ms if self.timing is not None else math.nan

    def to_dict(self) -> dict[str, Any]:
        t = self.timing
        return {
            "suite": self.suite,
            "case": self.case,
            "shape": list(self.shape),
            "method": self.method,
            "kind": self.kind,
            "pass": self.pass_,
            "median_ms": None if t is None else t.median_ms,
            "min_ms": None if t is None else t.min_ms,
            "iqr_ms": None if t is None else t.iqr_ms,
            "repeat": None if t is None else t.repeat,
            "ratios": dict(self.ratios),
            "fwd_err": self.fwd_err,
            "grad_err": self.grad_err,
            "peak_mib": self.peak_mib,
            "target": None if self.target is None else self.target.to_dict(),
            "target_text": None if self.target is None else self.target.describe(),
            "met": self.met,
            "note": self.note,
        }


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Inf: non-finite floats become null (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _fmt_ms(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}" if v >= 0.01 else f"{v:.4f}"


def _fmt_ratio(v: float | None) -> str:
    if v is None:
        return ""
    if not math.isfinite(v):
        return "nan"
    return f"{v:.0f}" if v >= 100 else f"{v:.2f}"


def _fmt_err(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1e}" if math.isfinite(v) else str(v)


@dataclass
class Report:
    """Run metadata (device, torch version, dtype, TF32, date, ...) and the result rows."""

    meta: dict[str, Any]
    results: list[Result]

    def to_dict(self) -> dict[str, Any]:
        return _finite_or_none({"meta": self.meta, "results": [r.to_dict() for r in self.results]})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def header(self) -> str:
        m = self.meta
        tf32 = m["tf32"]
        lines = [
            f"# orthocond bench: {m['device']} ({m['device_type']}), torch {m['torch']}, "
            f"orthocond {m['orthocond']}, dtype {m['dtype']}, "
            f"TF32 {'on' if tf32['enabled'] else 'off'} (matmul {tf32['matmul']}, cudnn conv "
            f"{tf32['cudnn_conv']}), {m['date']}",
            f"# median of up to {m['repeat']} runs after {m['warmup']} warm-up "
            f"({m['timer']}); x<baseline> = median / baseline median in the same case "
            "(same pass, bmm/svd forward only); errors: relative Frobenius vs float64 "
            "reference; peak = extra CUDA memory of one call",
        ]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        baselines: list[str] = []
        for r in self.results:
            if r.kind == "baseline" and r.method not in baselines:
                baselines.append(r.method)
        with_target = any(r.target is not None for r in self.results)
        cols = ["suite", "case", "method", "pass", "median ms", "IQR ms"]
        cols += [f"x {b}" for b in baselines]
        cols += ["fwd err", "grad err", "peak MiB"]
        if with_target:
            cols += ["target", "met?"]
        cols.append("note")
        rows = []
        for r in self.results:
            name = f"{r.method} (base)" if r.kind == "baseline" else r.method
            t = r.timing
            row = [r.suite, r.case, name, r.pass_, _fmt_ms(r.median_ms)]
            row.append(_fmt_ms(t.iqr_ms) if t is not None else "-")
            row += [_fmt_ratio(r.ratios.get(b)) for b in baselines]
            row += [_fmt_err(r.fwd_err), _fmt_err(r.grad_err)]
            row.append("-" if r.peak_mib is None else f"{r.peak_mib:.1f}")
            if with_target:
                row.append("" if r.target is None else r.target.describe())
                row.append("" if r.met is None else ("yes" if r.met else "NO"))
            row.append(r.note)
            rows.append(row)
        lines = [self.header(), "", "| " + " | ".join(cols) + " |"]
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)


# --------------------------------------------------------------------------- running


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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    name = name or platform.processor() or platform.machine() or "CPU"
    threads = torch.get_num_threads()
    return f"{name}, {threads} torch thread{'s' if threads != 1 else ''}"


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; reject cuda without a GPU and other types."""
    if device == "auto":
        return _as_device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:index]', got {device!r}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:index]', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but torch.cuda.is_available() is False")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist ({torch.cuda.device_count()} GPUs)")
    return _as_device(dev)


def parse_size(text: str) -> tuple[str | None, tuple[int, ...]]:
    """``"[suite:]AxBx..."`` -> (suite or None, positive dims). Raises ValueError.

    Example:
        >>> parse_size("gcp:128x256x14x14")
        ('gcp', (128, 256, 14, 14))
    """
    if not isinstance(text, str):
        raise TypeError(f"size must be a str, got {type(text).__name__}")
    suite: str | None = None
    dims_text = text.strip()
    if ":" in dims_text:
        suite, dims_text = (s.strip() for s in dims_text.split(":", 1))
        if suite not in SUITES:
            raise ValueError(f"size {text!r}: suite must be one of {', '.join(SUITES)}, got {suite!r}")
    try:
        dims = tuple(int(d) for d in dims_text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r}: expected positive integers joined by 'x', e.g. 64x576") from None
    if any(d < 1 for d in dims):
        raise ValueError(f"size {text!r}: every dimension must be >= 1")
    if suite is not None:
        _check_shape(suite, dims)
    return suite, dims


def _check_shape(suite: str, dims: tuple[int, ...]) -> None:
    names = SHAPE_NAMES[suite]
    if len(dims) != len(names):
        raise ValueError(
            f"suite {suite!r} takes sizes {'x'.join(names)} ({len(names)} numbers), got "
            f"{'x'.join(map(str, dims))}"
        )
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dims):
        raise ValueError(f"suite {suite!r}: every dimension must be a positive int, got {dims}")
    if suite == "zca" and dims[0] * dims[2] * dims[3] < 2:
        raise ValueError(f"suite 'zca' needs N*H*W >= 2 samples, got {'x'.join(map(str, dims))}")


def _failure(err: Exception, what: str = "failed") -> str:
    return f"{what}: {type(err).__name__}: {str(err).splitlines()[0][:80]}"


def _accuracy(subject: Subject) -> tuple[float | None, float | None, str]:
    """``(fwd err, grad err, note)`` of a subject; a failing reference is reported, not raised
    (e.g. eigh failing to converge)."""
    if subject.accuracy is None:
        return None, None, ""
    try:
        fwd_err, grad_err = subject.accuracy()
    except (RuntimeError, ValueError) as err:
        return None, None, _failure(err, "accuracy failed")
    return fwd_err, grad_err, ""


def _time_alone(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int, max_time_s: float | None
) -> tuple[Timing | None, float | None, str]:
    """``(timing, peak MiB, failure note)`` of one callable; CUDA OOM, solver failures, ...
    become a note."""
    try:
        timing = benchmark(fn, device=device, warmup=warmup, repeat=repeat, max_time_s=max_time_s)
        return timing, peak_memory_mib(fn, device), ""
    except (RuntimeError, ValueError) as err:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None, None, _failure(err)


def _row(case: Case, subject: Subject, pass_: str, timing: Timing | None, peak: float | None,
         accuracy: tuple[float | None, float | None, str], note: str) -> Result:
    fwd_err, grad_err, accuracy_note = accuracy
    target = subject.target if subject.target is not None and pass_ in subject.target.passes else None
    return Result(
        case.suite, case.label, case.shape, subject.name, subject.kind, pass_, timing,
        fwd_err=fwd_err, grad_err=grad_err if pass_ != "fwd" else None, peak_mib=peak,
        target=target, note=note or accuracy_note or case.note,
    )  # fmt: skip


def _measure_subject(
    case: Case, subject: Subject, device: torch.device, warmup: int, repeat: int, max_time_s: float | None
) -> list[Result]:
    accuracy = _accuracy(subject)
    results = []
    for pass_ in PASSES:
        fn = subject.run.get(pass_)
        if fn is not None:
            timing, peak, note = _time_alone(fn, device, warmup, repeat, max_time_s)
            results.append(_row(case, subject, pass_, timing, peak, accuracy, note))
    return results


def _measure_interleaved(
    case: Case, device: torch.device, warmup: int, repeat: int, max_time_s: float | None
) -> list[Result]:
    """Rows of a case whose subjects are timed round-robin, pass by pass; if that fails, the
    pass's subjects are timed one at a time, so that only the failing one is marked."""
    accuracy = {id(s): _accuracy(s) for s in case.subjects}
    results = []
    for pass_ in PASSES:
        subjects = [s for s in case.subjects if s.run.get(pass_) is not None]
        if not subjects:
            continue
        fns = [s.run[pass_] for s in subjects]
        try:
            timings = benchmark_interleaved(
                fns, device=device, warmup=warmup, repeat=repeat, max_time_s=max_time_s
            )
            measured = [(t, peak_memory_mib(fn, device), "") for t, fn in zip(timings, fns)]
        except (RuntimeError, ValueError):
            if device.type == "cuda":
                torch.cuda.empty_cache()
            measured = [_time_alone(fn, device, warmup, repeat, max_time_s) for fn in fns]
        for subject, (timing, peak, note) in zip(subjects, measured):
            results.append(_row(case, subject, pass_, timing, peak, accuracy[id(subject)], note))
    return results


def _fill_ratios(results: list[Result]) -> None:
    """x<baseline> = median / baseline median (same pass if timed there, else forward)."""
    base: dict[tuple[str, str], float] = {
        (r.method, r.pass_): r.median_ms for r in results if r.kind == "baseline"
    }
    names = list(dict.fromkeys(name for name, _ in base))
    for r in results:
        for name in names:
            if r.kind == "baseline" and r.method == name:
                continue
            ref = base.get((name, r.pass_), base.get((name, "fwd")))
            if ref is None:
                continue
            r.ratios[name] = r.median_ms / ref if ref > 0 else math.nan
        if r.target is not None:
            r.met = r.target.check(r.median_ms, r.fwd_err, r.ratios)


def run_case(
    case: Case,
    device: torch.device,
    *,
    warmup: int,
    repeat: int,
    max_time_s: float | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Result]:
    """Measure every subject of ``case``; return its rows with ratios and targets filled in."""
    results: list[Result] = []
    try:
        if case.interleave:
            if log is not None:
                log(f"  {case.suite} {case.label}: {', '.join(s.name for s in case.subjects)} "
                    "(interleaved)")
            results += _measure_interleaved(case, device, warmup, repeat, max_time_s)
        else:
            for subject in case.subjects:
                if log is not None:
                    log(f"  {case.suite} {case.label}: {subject.name}")
                results += _measure_subject(case, subject, device, warmup, repeat, max_time_s)
    finally:
        if case.cleanup is not None:
            case.cleanup()
    _fill_ratios(results)
    return results


def run_bench(
    suites: Sequence[str] = SUITES,
    *,
    device: str | torch.device = "auto",
    dtype: str = "float32",
    sizes: dict[str, Sequence[tuple[int, ...]]] | None = None,
    tf32: bool = False,
    repeat: int | None = None,
    warmup: int | None = None,
    max_time_s: float | None = 2.0,
    quick: bool = False,
    step_model: str = "auto",
    log: Callable[[str], None] | None = None,
) -> Report:
    """Run the benchmark suites and return a :class:`Report`.

    Args:
        suites: any of ``"gcp"``, ``"zca"``, ``"nog"``, ``"step"``.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:i]"``.
        dtype: ``"float32"`` or ``"float64"``.
        sizes: per-suite sizes replacing the defaults (GPU anchors on CUDA, smaller ones on the
            CPU, tiny ones with ``quick``).
        tf32: allow TF32 in CUDA matmuls and cuDNN convolutions during the run.
        repeat, warmup: timed and warm-up calls per measurement (defaults: 20/3 on CUDA, 5/1 on
            the CPU, 2/1 with ``quick``).
        max_time_s: budget of the timed calls of one measurement (lowers ``repeat`` for slow
            methods, never below 3 calls); None: no budget.
        quick: tiny sizes and few repeats (a smoke test).
        step_model: network of the ``step`` suite: ``"auto"`` (ResNet-50-GCP on CUDA, a tiny
            GCP net on the CPU), ``"tiny"`` or ``"resnet50"``.
        log: called with a progress line before each subject.

    Returns:
        Report with ``meta`` (device, torch, orthocond, dtype, TF32, date, ...) and the rows.
    """
    if isinstance(suites, str):
        suites = [suites]
    suites = list(dict.fromkeys(suites))
    if not suites or any(s not in SUITES for s in suites):
        raise ValueError(f"suites must be a non-empty subset of {SUITES}, got {suites!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if step_model not in STEP_MODELS:
        raise ValueError(f"step_model must be one of {', '.join(STEP_MODELS)}, got {step_model!r}")
    if not isinstance(tf32, bool):
        raise TypeError(f"tf32 must be a bool, got {type(tf32).__name__}")
    dev = resolve_device(device)
    on_gpu = dev.type == "cuda"
    if repeat is None:
        repeat = 2 if quick else (20 if on_gpu else 5)
    if warmup is None:
        warmup = 1 if quick else (3 if on_gpu else 1)
    _check_counts(warmup, repeat, max_time_s)
    defaults = QUICK_SIZES if quick else (GPU_SIZES if on_gpu else CPU_SIZES)
    sizes = dict(sizes or {})
    for suite, shapes in sizes.items():
        if suite not in suites:
            raise ValueError(f"sizes given for suite {suite!r}, which is not among suites {suites}")
        for shape in shapes:
            _check_shape(suite, tuple(shape))
    torch_dtype = DTYPES[dtype]
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[dev.index] if on_gpu else []))
        stack.enter_context(_tf32(tf32))
        torch.manual_seed(0)
        meta = {
            "device": _device_name(dev),
            "device_type": dev.type,
            "torch": torch.__version__,
            "orthocond": __version__,
            "python": platform.python_version(),
            "dtype": dtype,
            "tf32": _tf32_state(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "timer": "CUDA events" if on_gpu else "time.perf_counter",
            "repeat": repeat,
            "warmup": warmup,
            "max_time_s": max_time_s,
            "quick": quick,
            "suites": suites,
            "threads": torch.get_num_threads(),
        }
        for suite in suites:
            for shape in sizes.get(suite, defaults[suite]):
                shape = tuple(shape)
                targets = TARGETS.get((suite, shape), {}) if on_gpu and dtype == "float32" else {}
                kwargs = {"model_name": step_model} if suite == "step" else {}
                case = BUILDERS[suite](shape, dev, torch_dtype, targets, **kwargs)
                results += run_case(
                    case, dev, warmup=warmup, repeat=repeat, max_time_s=max_time_s, log=log
                )
                del case
                if on_gpu:
                    torch.cuda.empty_cache()
    return Report(meta, results)


# --------------------------------------------------------------------------- CLI


def _size_arg(text: str) -> tuple[str | None, tuple[int, ...]]:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orthocond bench",
        description="Time the meta-layer (gcp, zca) and NOG methods and a NOG+OLR training step "
        "against plain-PyTorch baselines, with float64-reference accuracy and peak memory.",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--suite", default="all", choices=("all", *SUITES))
    parser.add_argument(
        "--size",
        action="append",
        type=_size_arg,
        default=[],
        metavar="[SUITE:]AxB..",
        help="replace a suite's default sizes (repeatable): gcp:BxCxHxW, zca:NxCxHxW, nog:MxN, "
        "step:BxR; the SUITE: prefix may be omitted with a single --suite",
    )
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (CUDA)")
    parser.add_argument("--repeat", type=positive_int, default=None, help="timed runs (20 CUDA, 5 CPU)")
    parser.add_argument("--warmup", type=non_negative_int, default=None, help="warm-up runs (3 CUDA, 1 CPU)")
    parser.add_argument(
        "--max-time",
        type=positive_float,
        default=2.0,
        help="seconds of timed runs per measurement; fewer repeats for slow methods (default 2)",
    )
    parser.add_argument("--step-model", default="auto", choices=STEP_MODELS)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write JSON (- for stdout)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="progress lines on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m orthocond.bench`` and ``orthocond bench``; returns 0.

    Bad arguments exit through ``argparse`` (``SystemExit(2)`` with a message on stderr).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    sizes: dict[str, list[tuple[int, ...]]] = {}
    for suite, dims in args.size:
        if suite is None:
            if args.suite == "all":
                parser.error(f"--size {'x'.join(map(str, dims))} needs a SUITE: prefix with --suite all")
            suite = args.suite
            try:
                _check_shape(suite, dims)
            except ValueError as err:
                parser.error(f"--size: {err}")
        if suite not in suites:
            parser.error(f"--size {suite}:... given but --suite {args.suite} does not run {suite!r}")
        sizes.setdefault(suite, []).append(dims)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(f"--device: {err}")
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    report = run_bench(
        suites,
        device=device,
        dtype=args.dtype,
        sizes=sizes,
        tf32=args.tf32,
        repeat=args.repeat,
        warmup=args.warmup,
        max_time_s=args.max_time,
        quick=args.quick,
        step_model=args.step_model,
        log=log,
    )
    if args.json == "-":
        print(report.to_json())
    else:
        print(report.to_markdown())
        if args.json is not None:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(report.to_json() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
