"""``orthocond bench``: time every meta-layer and NOG method against plain-PyTorch baselines.

- :mod:`.timing`: medians of repeated runs, round-robin timing, peak memory, TF32.
- :mod:`.cases`: the suites (``gcp``, ``zca``, ``nog``, ``step``), their sizes and targets.
- :mod:`.report`: the result rows and the markdown / JSON report.
- :mod:`.run`: :func:`run_bench` (the command line is :mod:`orthocond.cli.bench`).
"""

from __future__ import annotations

from .cases import (
    CPU_SIZES,
    GPU_SIZES,
    PASSES,
    QUICK_SIZES,
    STEP_MODELS,
    SUITES,
    TARGETS,
    Target,
    relative_error,
)
from .report import Report, Result
from .run import DTYPES, check_shape, parse_size, run_bench, run_case
from .timing import Timing, benchmark, benchmark_interleaved, peak_memory_mib

__all__ = [
    "CPU_SIZES",
    "DTYPES",
    "GPU_SIZES",
    "PASSES",
    "QUICK_SIZES",
    "STEP_MODELS",
    "SUITES",
    "TARGETS",
    "Report",
    "Result",
    "Target",
    "Timing",
    "benchmark",
    "benchmark_interleaved",
    "check_shape",
    "parse_size",
    "peak_memory_mib",
    "relative_error",
    "run_bench",
    "run_case",
]
