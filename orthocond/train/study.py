"""A multi-seed study of treatments on several applications: paired statistics against
vanilla (95% confidence intervals over seeds), a table and a plot.

``orthocond compare --preset study`` runs it. Each application (``task``) runs every
treatment for the same seeds; the seed fixes the initial weights and the batch order, so a
treatment's run and vanilla's run with the same seed form a pair, and the per-seed
differences (accuracy in percentage points, log10 of the κ ratio, failures) remove most of
the seed-to-seed variation the unpaired means carry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .plots import pyplot
from .result import T_975, RunResult, mean_ci, t_quantile

__all__ = ["T_975", "mean_ci", "paired_rows", "format_study", "plot_study", "t_quantile"]


def _log10(v: float | None) -> float | None:
    return math.log10(v) if v is not None and 0 < v < math.inf else None


def paired_rows(results: Sequence[RunResult], baseline: str = "vanilla") -> list[dict[str, Any]]:
    """One row per treatment (first-seen order) of one application's runs.

    Per treatment: runs, failures, accuracy mean ± 95% CI (successful runs), κ final and
    κ max as geometric means with the 95% CI of their log10, and against ``baseline`` over
    the seeds both ran: the mean paired accuracy difference (percentage points, pairs where
    both succeeded), the geometric mean paired κ ratio (its log10 CI; "excludes 1" = the
    interval of the log lies on one side of 0) and the failure difference.
    """
    by_label: dict[str, dict[int, RunResult]] = {}
    for r in results:
        by_label.setdefault(r.label, {})[r.seed] = r
    base = by_label.get(baseline, {})
    rows = []
    for label, runs in by_label.items():
        ok = [r for r in runs.values() if not r.failed and r.final_acc is not None]
        row: dict[str, Any] = {"treatment": label, "runs": len(runs),
                               "failed": len(runs) - len(ok)}  # fmt: skip
        row["acc"], row["acc_ci"] = mean_ci([100.0 * r.final_acc for r in ok])
        for key in ("cond_final", "cond_max"):
            m, h = mean_ci([_log10(getattr(r, key)) for r in runs.values()])
            row[f"log_{key}"], row[f"log_{key}_ci"] = m, h
        pairs = [(runs[s], base[s]) for s in sorted(runs) if s in base]
        row["pairs"] = len(pairs)
        both = [(a, b) for a, b in pairs if a.final_acc is not None and b.final_acc is not None
                and not a.failed and not b.failed]  # fmt: skip
        row["d_acc"], row["d_acc_ci"] = mean_ci([100.0 * (a.final_acc - b.final_acc) for a, b in both])
        for key in ("cond_final", "cond_max"):
            diffs = []
            for a, b in pairs:
                la, lb = _log10(getattr(a, key)), _log10(getattr(b, key))
                if la is not None and lb is not None:
                    diffs.append(la - lb)
            row[f"d_log_{key}"], row[f"d_log_{key}_ci"] = mean_ci(diffs)
        row["d_failed"] = sum(int(a.failed) - int(b.failed) for a, b in pairs)
        rows.append(row)
    return rows


def _pm(m: float | None, h: float | None, spec: str) -> str:
    if m is None:
        return "–"
    return f"{m:{spec}}" + (f" ± {h:{spec.lstrip('+')}}" if h is not None else "")


def _geo(m: float | None, h: float | None) -> str:
    """A geometric mean 10^m with its 95% interval [10^(m-h), 10^(m+h)]."""
    if m is None:
        return "–"
    if h is None:
        return f"{10 ** m:.3g}"
    return f"{10 ** m:.3g} [{10 ** (m - h):.3g}, {10 ** (m + h):.3g}]"


def _ratio(m: float | None, h: float | None) -> str:
    if m is None:
        return "–"
    text = _geo(m, h)
    if h is not None and (m - h > 0 or m + h < 0):
        text += " *"
    return text


def format_study(tables: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: per application, one table of :func:`paired_rows`. κ columns are geometric
    means over seeds [95% CI]; "vs vanilla" columns are paired per seed; ``*`` marks a κ
    ratio whose 95% CI excludes 1."""
    out = []
    for task, rows in tables.items():
        out.append(f"### {task}\n")
        out.append(
            "| treatment | runs | acc % (mean ± 95% CI) | Δacc vs vanilla (pp) | κ final | "
            "κ final ÷ vanilla | κ max | κ max ÷ vanilla | failed (Δ) |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            out.append(
                f"| {r['treatment']} | {r['runs']} | {_pm(r['acc'], r['acc_ci'], '.2f')} | "
                f"{_pm(r['d_acc'], r['d_acc_ci'], '+.2f')} | "
                f"{_geo(r['log_cond_final'], r['log_cond_final_ci'])} | "
                f"{_ratio(r['d_log_cond_final'], r['d_log_cond_final_ci'])} | "
                f"{_geo(r['log_cond_max'], r['log_cond_max_ci'])} | "
                f"{_ratio(r['d_log_cond_max'], r['d_log_cond_max_ci'])} | "
                f"{r['failed']} ({r['d_failed']:+d}) |"
            )
        out.append("")
    return "\n".join(out)


def plot_study(tables: dict[str, list[dict[str, Any]]], out: Path) -> Path | None:
    """``study.png``: per application, the paired κ max ratio to vanilla (log scale, 95% CI)
    and the paired accuracy difference (95% CI), one row per treatment."""
    plt = pyplot()
    if plt is None:
        return None
    tasks = list(tables)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 0.45 * max(len(r) for r in tables.values()) * len(tasks) + 1.5), squeeze=False)
    for i, task in enumerate(tasks):
        rows = [r for r in tables[task] if r["d_log_cond_max"] is not None]
        names = [r["treatment"] for r in rows]
        y = np.arange(len(rows))
        for j, (key, label, log) in enumerate(
            (("d_log_cond_max", "κ max ÷ vanilla (paired, 95% CI)", True),
             ("d_acc", "Δ accuracy vs vanilla, pp (paired, 95% CI)", False))
        ):  # fmt: skip
            ax = axes[i][j]
            m = np.array([r[key] if r[key] is not None else np.nan for r in rows], dtype=float)
            h = np.array([r[f"{key}_ci"] or 0.0 for r in rows], dtype=float)
            if log:
                ax.errorbar(10**m, y, xerr=[10**m - 10 ** (m - h), 10 ** (m + h) - 10**m], fmt="o", capsize=3)
                ax.set_xscale("log")
                ax.axvline(1.0, color="k", lw=0.8)
                ax.axvline(0.1, color="g", lw=0.8, ls="--")
            else:
                ax.errorbar(m, y, xerr=h, fmt="o", capsize=3)
                ax.axvline(0.0, color="k", lw=0.8)
            ax.set_yticks(y)
            ax.set_yticklabels(names if j == 0 else [])
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.set_title(task if j == 0 else "")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "study.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
