"""Comparing treatments: a grid of runs (treatments x seeds), in parallel processes on the
CPU, aggregated into one table with plots."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Union

import torch

from orthocond._checks import check_int
from orthocond._io import atomic_write, jsonable
from orthocond.data import DataSplits, load_dataset

from .config import TrainConfig
from .distributed import ddp_active, distributed_env
from .gan import GAN_STUDY_TREATMENTS
from .plots import plot_compare, plot_compare_landscape
from .result import RunResult
from .study import format_study, paired_rows, plot_study
from .tasks import task_kind
from .trainer import Trainer
from .treatments import DEFAULT_TREATMENTS, FAILURE_TREATMENTS, STUDY_TREATMENTS

__all__ = [
    "COMPARE_DEFAULTS", "COMPARE_PRESETS", "COMPARE_TASKS", "TASK_COMPARE_DEFAULTS",
    "compare", "compare_tasks", "default_treatments", "runs_for_task", "slug",
]  # fmt: skip

#: The applications ``orthocond compare`` runs by default: the decorrelated-BN stem and the
#: GCP head.
COMPARE_TASKS = ("dbn", "gcp")
#: Per-task defaults of ``orthocond compare`` where an option is not given: the GCP
#: ResNet-18 keeps full resolution through its CIFAR stem, so width 8 (covariance 64 x 64)
#: keeps its runs about as long as the DBN ones at width 16.
TASK_COMPARE_DEFAULTS: dict[str, dict[str, Any]] = {"gcp": {"width": 8}}

#: Where ``orthocond compare``'s defaults differ from :class:`TrainConfig`'s: a condition
#: record every 2 steps (the quick MNIST runs have few).
COMPARE_DEFAULTS: dict[str, Any] = {"monitor_every": 2}

#: ``orthocond compare --preset NAME``: defaults of the compare options (explicit options
#: win). failures: the paper DBN eps 1e-5 and short noisy runs (64 steps of batch 32), 8 seeds
#: per treatment, where the unguarded textbook eigen-gradient NaNs (72 runs, ~6 minutes on 2
#: cores).
COMPARE_PRESETS: dict[str, dict[str, Any]] = {
    "failures": {
        "eps": 1e-5, "lr": 0.1, "batch_size": 32, "limit_train": 2048, "epochs": 1,
        "augment": False, "seeds": 8, "monitor_every": 4,
        "treatments": ",".join(FAILURE_TREATMENTS), "out": str(Path("runs") / "failures"),
        "tasks": "dbn",
    },
    "study": {
        "epochs": 2, "limit_train": 1152, "limit_test": 500, "batch_size": 32,
        "milestones": (1.5,), "monitor_every": 4, "seeds": 5, "treatments": ",".join(STUDY_TREATMENTS),
        "tasks": ",".join(COMPARE_TASKS), "out": str(Path("runs") / "study"),
    },
    # the GAN latent-disentanglement study (README): the GAN treatments, 3 seeds, DCGAN on
    # the 4,000 embedded training digits, 8 epochs; ~30 minutes on one core with --jobs 1
    "gan-study": {
        "tasks": "gan", "epochs": 8, "batch_size": 64, "seeds": 3,
        "treatments": ",".join(GAN_STUDY_TREATMENTS), "out": str(Path("runs") / "gan-study"),
    },
}  # fmt: skip


def default_treatments(task: str) -> tuple[str, ...]:
    """The grid ``compare`` runs for ``task`` without ``treatments``."""
    return task_kind(task).default_treatments


def compare(
    base: TrainConfig,
    treatments: Sequence[str] | None = None,
    *,
    seeds: int = 1,
    out: Union[str, os.PathLike, None] = None,
    data: DataSplits | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    jobs: int = 1,
    threads: int | None = None,
) -> tuple[list[dict[str, Any]], list[RunResult]]:
    """Run every treatment for seeds ``base.seed .. base.seed + seeds - 1`` and aggregate.

    Failed runs (non-finite values, divergence, eigensolver errors) are counted, not
    raised. With ``out``: ``compare.md``, ``compare.json``, ``condition.png`` (log10 κ vs
    step, one line per treatment), ``accuracy.png`` and ``runs/<treatment>-s<seed>/``
    (metrics.jsonl, steps.csv, summary.json).

    Args:
        base (TrainConfig): settings shared by all runs (its treatment fields are replaced).
        treatments (sequence of str, optional): treatment names (:func:`parse_treatment`;
            task gan: :func:`~orthocond.train.gan.parse_gan_treatment`); default
            :func:`default_treatments` of ``base.task``.
        seeds (int): runs per treatment. Default 1.
        out (path, optional): output folder.
        data (DataSplits, optional): preloaded data (``jobs=1`` only; workers load their own).
        progress (bool): progress bars (``jobs=1`` only).
        log (callable): receives one line per finished run.
        jobs (int): runs trained at the same time, each in its own process (``spawn``).
            Small CPU models gain nothing from intra-op threads, so on a 2-core CPU two
            single-threaded jobs train about twice as fast as one two-threaded run. Default 1.
        threads (int, optional): ``torch.set_num_threads`` in each run (None: unchanged).

    Returns:
        (rows of :func:`aggregate`, the individual :class:`RunResult` list, in grid order)
    """
    if distributed_env() is not None or ddp_active():
        raise ValueError(
            "compare does not support torchrun / distributed training (WORLD_SIZE > 1); run "
            "`orthocond compare` as a single process (--jobs N trains runs in parallel) or "
            "`orthocond train` under torchrun"
        )
    check_int(seeds, "seeds")
    check_int(jobs, "jobs")
    check_int(threads, "threads", allow_none=True)
    kind = task_kind(base.task)
    if treatments is None:
        treatments = kind.default_treatments
    if not treatments:
        raise ValueError("treatments must name at least one treatment")
    for t in treatments:
        kind.parse_treatment(t)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    outp = Path(out) if out is not None else None
    grid: list[tuple[TrainConfig, Path | None]] = []
    for t in treatments:
        for k in range(seeds):
            cfg = base.replace(
                treatment=t, seed=base.seed + k, checkpoint=False, tensorboard=False, plots=False
            )
            run_out = None if outp is None else outp / "runs" / f"{slug(t)}-s{cfg.seed}"
            grid.append((cfg, run_out))

    def report(res: RunResult) -> None:
        log(f"[compare] {res.label} seed {res.seed}: {kind.run_line(res)}")

    jobs = min(jobs, len(grid))
    results: list[RunResult] = []
    if jobs == 1:
        if data is None:
            data = load_dataset(
                base.dataset, data_dir=base.data_dir, download=base.download,
                limit_train=base.limit_train, limit_test=base.limit_test, num_workers=base.workers,
            )  # fmt: skip
        saved_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            for cfg, run_out in grid:
                results.append(_run_one(cfg, run_out, data=data, progress=progress, log=log))
                report(results[-1])
        finally:
            torch.set_num_threads(saved_threads)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        slots: list[RunResult | None] = [None] * len(grid)
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(_run_one, cfg, run_out): i for i, (cfg, run_out) in enumerate(grid)}
            for fut in as_completed(futures):
                res = fut.result()
                slots[futures[fut]] = res
                report(res)
        results = [r for r in slots if r is not None]
    rows = kind.aggregate(results)
    if outp is not None:
        outp.mkdir(parents=True, exist_ok=True)
        atomic_write(outp / "compare.md", kind.format_table(rows) + "\n")
        payload = {"config": base.to_dict(), "treatments": list(treatments), "seeds": seeds,
                   "rows": rows, "runs": [r.to_dict() for r in results]}
        atomic_write(outp / "compare.json", json.dumps(jsonable(payload), indent=1) + "\n")
        if kind.traversals:
            _collect_traversals(grid, outp)
        elif base.plots:
            plot_compare(results, outp)
            if base.landscape_every:
                plot_compare_landscape(
                    [(res, run_out) for res, (_, run_out) in zip(results, grid)], outp,
                    with_seed=seeds > 1,
                )  # fmt: skip
    return rows, results


def _collect_traversals(grid: Sequence[tuple[TrainConfig, Path | None]], outp: Path) -> None:
    """``traversals/<treatment>.png``: the latent traversal of each treatment's first seed."""
    import shutil

    done: set[str] = set()
    for cfg, run_out in grid:
        src = None if run_out is None else run_out / "traversal.png"
        if cfg.label in done or src is None or not src.is_file():
            continue
        (outp / "traversals").mkdir(exist_ok=True)
        shutil.copyfile(src, outp / "traversals" / f"{slug(cfg.label)}.png")
        done.add(cfg.label)


def _init_worker(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def _run_one(
    cfg: TrainConfig,
    out: Path | None,
    *,
    data: DataSplits | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    trainer = Trainer(cfg, data=data, out=out, progress=progress, log=log)
    try:
        return trainer.fit()
    finally:
        trainer.monitor.close()


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name.replace("+", "_"))


def runs_for_task(task: str, treatments: Sequence[str]) -> list[str]:
    """The treatments of ``treatments`` that exist for ``task`` (``soc`` replaces the DBN
    stem and has no GCP counterpart)."""
    return [t for t in treatments if task == "dbn" or "soc" not in t.split("+")]


def compare_tasks(
    bases: dict[str, TrainConfig],
    treatments: Sequence[str] = DEFAULT_TREATMENTS,
    *,
    seeds: int = 1,
    out: Union[str, os.PathLike, None] = None,
    log: Callable[[str], None] | None = None,
    jobs: int = 1,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, tuple[list[dict[str, Any]], list[RunResult]]]:
    """:func:`compare` on several applications (``bases``: task name -> its settings), each
    into ``out/<task>/``, the treatments a task cannot run left out (:func:`runs_for_task`);
    then, with ``out``, ``study.md`` / ``study.json`` / ``study.png``: per task the paired
    per-seed comparison with vanilla (:func:`~orthocond.train.study.paired_rows`).

    Returns ``{task: (rows, results)}`` as :func:`compare` returns them.
    """
    if not bases:
        raise ValueError("bases must name at least one task")
    outp = Path(out) if out is not None else None
    done: dict[str, tuple[list[dict[str, Any]], list[RunResult]]] = {}
    for task, base in bases.items():
        names = runs_for_task(task, treatments)
        if not names:
            continue
        done[task] = compare(
            base, names, seeds=seeds, out=None if outp is None else outp / task, log=log,
            jobs=jobs, threads=threads, progress=progress,
        )  # fmt: skip
    if outp is not None:
        tables = {task: paired_rows(results) for task, (_, results) in done.items()}
        atomic_write(outp / "study.md", format_study(tables) + "\n")
        atomic_write(outp / "study.json", json.dumps(jsonable({"seeds": seeds, "tables": tables}), indent=1) + "\n")
        if any(b.plots for b in bases.values()):
            plot_study(tables, outp)
    return done


# --------------------------------------------------------------------------- plots
