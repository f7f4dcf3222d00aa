"""What a run produced (:class:`RunResult`) and the table of a comparison over runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from orthocond._io import jsonable

__all__ = [
    "T_975",
    "RunResult",
    "aggregate",
    "format_number",
    "format_table",
    "geomean",
    "mean_ci",
    "t_quantile",
]


@dataclass
class RunResult:
    """Outcome of one run (plain data; :meth:`to_dict` is JSON-ready)."""

    label: str
    seed: int
    config: dict[str, Any]
    failed: bool = False
    reason: str | None = None
    epochs_completed: int = 0
    steps: int = 0
    wall_s: float = 0.0
    final_acc: float | None = None
    best_acc: float | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    cond_key: str | None = None
    cond_steps: list[int] = field(default_factory=list)
    cond_values: list[float | None] = field(default_factory=list)
    cond_final: float | None = None
    cond_max: float | None = None
    ortho_err: float | None = None
    weight_norm: float | None = None
    #: the task's end-of-run metrics (gan: fid, ppl, vp, kappa, ortho_err); {} for classifiers
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


# --------------------------------------------------------------------------- trainer


def aggregate(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per treatment (in first-seen order) over its seeds: accuracy mean/std of
    the successful runs, κ final (geometric mean over seeds) and max, orthogonality error and
    weight norm (mean), failure count and, of those, the runs that hit a NaN/Inf
    (``nonfinite``; the others diverged or had an eigensolver error)."""
    rows: dict[str, list[RunResult]] = {}
    for r in results:
        rows.setdefault(r.label, []).append(r)
    table = []
    for label, runs in rows.items():
        ok = [r for r in runs if not r.failed and r.final_acc is not None]
        accs = [100.0 * r.final_acc for r in ok]
        finals = [r.cond_final for r in runs if r.cond_final is not None]
        maxes = [r.cond_max for r in runs if r.cond_max is not None]
        errs = [r.ortho_err for r in runs if r.ortho_err is not None]
        norms = [r.weight_norm for r in runs if r.weight_norm is not None]
        table.append({
            "treatment": label,
            "runs": len(runs),
            "failed": len(runs) - len(ok),
            "nonfinite": sum(1 for r in runs if r.failed and (r.reason or "").startswith("non-finite")),
            "acc_mean": float(np.mean(accs)) if accs else None,
            "acc_std": float(np.std(accs)) if len(accs) > 1 else (0.0 if accs else None),
            "cond_final": geomean(finals),
            "cond_max": max(maxes) if maxes else None,
            "ortho_err": float(np.mean(errs)) if errs else None,
            "weight_norm": float(np.mean(norms)) if norms else None,
            "wall_s": float(sum(r.wall_s for r in runs)),
            "reasons": [r.reason for r in runs if r.failed],
        })  # fmt: skip
    return table


def geomean(vals: Sequence[float]) -> float | None:
    if not vals:
        return None
    if any(not (0 < v < math.inf) for v in vals):
        return math.inf
    return float(math.exp(sum(math.log(v) for v in vals) / len(vals)))


def format_number(v: float | None, spec: str) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "inf"
    return format(v, spec)


def _failed_cell(row: dict[str, Any]) -> str:
    cell = f"{row['failed']}/{row['runs']}"
    nonfinite = row.get("nonfinite", 0)
    return cell + (f" ({nonfinite} NaN/Inf)" if nonfinite else "")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`aggregate` rows."""
    head = (
        "| treatment | test acc % (mean ± std) | κ(Σ) final | κ(Σ) max | ortho err | ‖W‖_F | failed |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        acc = "—" if r["acc_mean"] is None else f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}"
        lines.append(
            f"| {r['treatment']} | {acc} | {format_number(r['cond_final'], '.3g')} | {format_number(r['cond_max'], '.3g')} "
            f"| {format_number(r['ortho_err'], '.3g')} | {format_number(r['weight_norm'], '.3g')} | {_failed_cell(r)} |"
        )
    return "\n".join(lines)


#: Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (then 1.96).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile(df: int) -> float:
    """t_{0.975, df} (:data:`T_975`; the normal 1.96 beyond 30)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return T_975[df - 1] if df <= len(T_975) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, half-width of its 95% t interval); half-width None for fewer than 2 values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    mean = float(np.mean(vals))
    if len(vals) < 2:
        return mean, None
    return mean, t_quantile(len(vals) - 1) * float(np.std(vals, ddof=1)) / math.sqrt(len(vals))
