"""The plots of a run and of a comparison (matplotlib, optional: without it nothing is drawn)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from orthocond.analysis.landscape import LandscapeRecord, plot_landscape

from .result import RunResult
from .run_dir import LANDSCAPE_NAME

__all__ = ["plot_compare", "plot_compare_landscape", "plot_run", "pyplot", "read_landscape"]


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return plt


def _save(plt: Any, fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, *,
          title: str | None = None, legend: bool = False, dpi: int = 120) -> Path:
    """Label, grid, legend, save and close one figure; returns its path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _log10_series(steps: Sequence[int], vals: Sequence[float | None]) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for s, v in zip(steps, vals):
        if v is not None and 0 < v < math.inf:
            xs.append(s)
            ys.append(math.log10(v))
    return xs, ys


def plot_run(result: RunResult, out: Union[str, os.PathLike]) -> list[Path]:
    """``condition.png`` (log10 κ vs step) and ``accuracy.png`` (train/test accuracy vs
    epoch) of one run; returns the written paths (none without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    out = Path(out)
    written = []
    if result.cond_steps:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs, ys = _log10_series(result.cond_steps, result.cond_values)
        ax.plot(xs, ys, lw=1)
        written.append(_save(plt, fig, ax, out / "condition.png", "step",
                             f"log10 κ ({result.cond_key})",
                             title=f"covariance condition number: {result.label}", dpi=110))
    if result.epochs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ep = [e["epoch"] for e in result.epochs]
        ax.plot(ep, [100 * e["train_acc"] for e in result.epochs], "o-", label="train")
        ax.plot(ep, [100 * e["test_acc"] for e in result.epochs], "s-", label="test")
        written.append(_save(plt, fig, ax, out / "accuracy.png", "epoch", "accuracy %",
                             legend=True, dpi=110))
    return written


def plot_compare(results: Sequence[RunResult], out: Union[str, os.PathLike]) -> list[Path]:
    """``condition.png``: log10 κ(Σ) vs step, one line per treatment (mean of log10 over
    seeds, min-max band with several seeds), as in the ECCV 2022 figure;
    ``accuracy.png``: test accuracy vs epoch per treatment (mean over seeds)."""
    plt = pyplot()
    if plt is None:
        return []
    out = Path(out)
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.label, []).append(r)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, runs in groups.items():
        per_step: dict[int, list[float]] = {}
        for r in runs:
            for s, v in zip(*_log10_series(r.cond_steps, r.cond_values)):
                per_step.setdefault(s, []).append(v)
        if not per_step:
            continue
        xs = sorted(per_step)
        mean = [float(np.mean(per_step[s])) for s in xs]
        (line,) = ax.plot(xs, mean, lw=1.2, label=label)
        if len(runs) > 1:
            ax.fill_between(xs, [min(per_step[s]) for s in xs], [max(per_step[s]) for s in xs],
                            color=line.get_color(), alpha=0.15, lw=0)
    condition = _save(plt, fig, ax, out / "condition.png", "training step",
                      "log10 κ(Σ) of the meta-layer covariance",
                      title="covariance conditioning per treatment", legend=True)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, runs in groups.items():
        per_epoch: dict[int, list[float]] = {}
        for r in runs:
            for e in r.epochs:
                per_epoch.setdefault(e["epoch"], []).append(100 * e["test_acc"])
        if per_epoch:
            xs = sorted(per_epoch)
            ax.plot(xs, [float(np.mean(per_epoch[x])) for x in xs], "o-", ms=3, label=label)
    accuracy = _save(plt, fig, ax, out / "accuracy.png", "epoch", "test accuracy %", legend=True)
    return [condition, accuracy]


def read_landscape(path: Union[str, os.PathLike]) -> list[Any]:
    """The :class:`~orthocond.analysis.LandscapeRecord` list of a run's ``landscape.json``
    (non-finite values, stored as null, come back as NaN)."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise ValueError(f"{str(path)!r} is not a landscape.json (no 'records' list)")

    def nan(v: Any) -> Any:
        if v is None:
            return math.nan
        return [nan(x) for x in v] if isinstance(v, list) else v

    return [
        LandscapeRecord.from_dict({k: (v if k == "step" else nan(v)) for k, v in r.items()})
        for r in payload["records"]
    ]


def plot_compare_landscape(
    runs: Sequence[tuple[RunResult, Path | None]], out: Union[str, os.PathLike], *,
    with_seed: bool = False,
) -> Path | None:
    """``landscape.png`` in ``out``: the landscape bands of every run (read from its
    ``landscape.json``) overlaid, one colour per run (label ``treatment`` or, with
    ``with_seed``, ``treatment s<seed>``). None when no run has records or matplotlib is
    missing."""
    if pyplot() is None:
        return None
    histories: dict[str, list[Any]] = {}
    for res, run_out in runs:
        path = None if run_out is None else Path(run_out) / LANDSCAPE_NAME
        if path is None or not path.is_file():
            continue
        records = read_landscape(path)
        if records:
            histories[f"{res.label} s{res.seed}" if with_seed else res.label] = records
    if not histories:
        return None
    return plot_landscape(histories, Path(out) / "landscape.png",
                          title="loss landscape per treatment (CVPR 2020 probe)")

