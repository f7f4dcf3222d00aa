"""``orthocond bench``: time every meta-layer and NOG method against plain-PyTorch baselines.

For each suite (``gcp``, ``zca``, ``nog``, ``polar``, ``step``; see :mod:`orthocond.bench.cases`) and
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

    orthocond bench [--device auto|cpu|cuda] [--suite all|gcp|zca|nog|polar|step]
        [--size [SUITE:]AxB...] [--dtype float32|float64] [--tf32] [--repeat N] [--warmup N]
        [--max-time S] [--step-model auto|tiny|resnet50] [--json PATH] [--quick]

``--size`` replaces a suite's default sizes (repeatable; ``gcp:128x256x14x14``, ``zca:NxCxHxW``,
``nog:MxN``, ``polar:MxN``, ``step:BxR``; the ``SUITE:`` prefix may be left out with a single
``--suite``).

Example:
    >>> from orthocond.bench import run_bench
    >>> report = run_bench(["nog"], device="cpu", quick=True)  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import datetime
import math
import platform
from typing import Any, Callable, Sequence

import torch

from orthocond._checks import resolve_device
from orthocond._version import __version__

from .cases import (
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
)
from .report import Report, Result, device_name
from .timing import (
    Timing,
    _as_device,
    _check_counts,
    _tf32,
    _tf32_state,
    benchmark,
    benchmark_interleaved,
    peak_memory_mib,
)

__all__ = ["DTYPES", "check_shape", "parse_size", "run_bench", "run_case"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
        check_shape(suite, dims)
    return suite, dims


def check_shape(suite: str, dims: tuple[int, ...]) -> None:
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
        suites: any of ``"gcp"``, ``"zca"``, ``"nog"``, ``"polar"``, ``"step"``.
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
    dev = _as_device(resolve_device(device))
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
            check_shape(suite, tuple(shape))
    torch_dtype = DTYPES[dtype]
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[dev.index] if on_gpu else []))
        stack.enter_context(_tf32(tf32))
        torch.manual_seed(0)
        meta = {
            "device": device_name(dev),
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


