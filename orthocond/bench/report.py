"""The benchmark's rows (:class:`Result`) and report (:class:`Report`: markdown and JSON)."""

from __future__ import annotations

import contextlib
import json
import math
import platform
from dataclasses import dataclass, field
from typing import Any

import torch

from .cases import Target
from .timing import Timing

__all__ = ["Report", "Result", "device_name"]


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


def device_name(device: torch.device) -> str:
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
