"""What ``orthocond train``, ``compare`` and ``eval`` do with their parsed options."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from orthocond._checks import resolve_device
from orthocond._io import jsonable
from orthocond.analysis import format_corruption_report
from orthocond.train import (
    CHECKPOINT_NAME,
    TASK_COMPARE_DEFAULTS,
    clear_run_outputs,
    compare,
    compare_tasks,
    distributed_env,
    evaluate_checkpoint,
    format_table,
    parse_treatment,
    runs_for_task,
    train,
)
from orthocond.train.compare import default_treatments, slug
from orthocond.train.gan import format_gan_table, parse_gan_treatment

from .parser import config_from_args

__all__ = ["cmd_compare", "cmd_eval", "cmd_train"]


def _print_summary(result: Any, out: Path) -> None:
    def fmt(v: Any, spec: str = ".4g") -> str:
        if v is None:
            return "—"
        return "inf" if isinstance(v, float) and math.isinf(v) else format(v, spec)

    s = result.summary
    lines = [
        f"run          : {result.label} (seed {result.seed})",
        f"status       : {'FAILED: ' + str(result.reason) if result.failed else 'ok'}",
        f"epochs/steps : {result.epochs_completed} / {result.steps} in {result.wall_s:.1f} s",
        f"test acc     : final {fmt(result.final_acc and 100 * result.final_acc, '.2f')}% "
        f"best {fmt(result.best_acc and 100 * result.best_acc, '.2f')}%",
        f"cond (kappa) : final {fmt(result.cond_final, '.3g')}, max {fmt(result.cond_max, '.3g')}"
        f" ({result.cond_key})",
        f"Pre-SVD W    : ortho err {fmt(result.ortho_err, '.3g')}, "
        f"||W||_F {fmt(result.weight_norm, '.3g')}",
        f"non-finite   : loss {s.get('nonfinite_loss', 0)}, grad {s.get('nonfinite_grad', 0)}",
        f"outputs      : {out}",
    ]
    if result.metrics:  # the task's end-of-run metrics (gan: FID, PPL, VP, κ, ortho err)
        lines.insert(-1, "metrics      : " + ", ".join(f"{k} {fmt(v)}" for k, v in result.metrics.items()))
    print("\n".join(lines))


def cmd_train(args: argparse.Namespace) -> int:
    env = distributed_env()  # torchrun: rank 0 prints (and clears), the others stay silent
    cfg = config_from_args(args, compare=False)
    ineffective = cfg.ineffective_settings()
    if ineffective:
        raise ValueError("options that would change nothing in this run: " + "; ".join(ineffective))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path("runs") / slug(
        f"{cfg.task}-{cfg.arch}-{cfg.dataset}-{cfg.label}-s{cfg.seed}"
    )
    if (out / CHECKPOINT_NAME).exists() and not (args.resume or args.overwrite):
        raise ValueError(
            f"{out / CHECKPOINT_NAME} already exists; pass --resume to continue that run, "
            "--overwrite to start afresh there, or choose another --out"
        )
    if args.overwrite and not args.resume and (env is None or env[0] == 0):
        clear_run_outputs(out)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    result = train(cfg, out=out, resume=args.resume, progress=not args.quiet, log=log,
                   sync_bn=args.sync_bn)
    if env is None or env[0] == 0:
        _print_summary(result, out)
    return 1 if result.failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    if distributed_env() is not None:
        raise ValueError(
            "compare does not support torchrun (WORLD_SIZE > 1); run `orthocond compare` "
            "without torchrun (--jobs N trains runs in parallel)"
        )
    base = config_from_args(args, compare=True)
    if "gan" in args.tasks:
        return _compare_gan(args, base)
    treatments = (
        [t.strip() for t in args.treatments.split(",") if t.strip()]
        if args.treatments is not None else list(default_treatments(base.task))
    )  # fmt: skip
    out = Path(args.out) if args.out else Path("runs") / "compare"
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    for t in treatments:
        parse_treatment(t)  # fail before starting any run
    # per task: the base settings, with the task's compare defaults where no option was given
    bases = {
        task: base.replace(task=task, **{
            k: v for k, v in TASK_COMPARE_DEFAULTS.get(task, {}).items() if getattr(args, k) is None
        })
        for task in args.tasks
    }  # fmt: skip
    grid = [cfg.replace(treatment=t) for task, cfg in bases.items() for t in runs_for_task(task, treatments)]
    if not grid:
        raise ValueError(f"none of the treatments {treatments} runs on the tasks {list(args.tasks)}")
    never = set.intersection(*(set(c.ineffective_settings()) for c in grid))
    if never:
        raise ValueError(
            "options that would change nothing in any of these treatments: " + "; ".join(sorted(never))
        )
    runs = len(grid) * args.seeds
    on_cpu = resolve_device(base.device).type == "cpu"
    jobs = args.jobs or (min(_cpu_count(), runs) if on_cpu else 1)
    threads = args.threads or (max(1, _cpu_count() // jobs) if on_cpu else None)
    t0 = time.perf_counter()
    if len(bases) == 1:
        ((task, cfg),) = bases.items()
        done = {task: compare(
            cfg, runs_for_task(task, treatments), seeds=args.seeds, out=out,
            progress=not args.quiet and jobs == 1, log=log, jobs=jobs, threads=threads,
        )}  # fmt: skip
        folders = {task: out}
    else:
        done = compare_tasks(
            bases, treatments, seeds=args.seeds, out=out, log=log, jobs=jobs, threads=threads,
            progress=not args.quiet and jobs == 1,
        )  # fmt: skip
        folders = {task: out / task for task in done}
    wall = time.perf_counter() - t0
    total = 0
    for task, (rows, results) in done.items():
        total += len(results)
        if len(done) > 1:
            print(f"### {task}\n")
        print(format_table(rows))
        for r in rows:
            if r["reasons"]:
                print(f"failed runs of {r['treatment']} ({len(r['reasons'])}): {'; '.join(r['reasons'])}")
        if len(done) > 1:
            print()
    if len(done) > 1:
        print((out / "study.md").read_text(encoding="utf-8"))
    cfg0 = next(iter(bases.values()))
    landscape = ", landscape.png" if cfg0.landscape_every and cfg0.plots else ""
    where = ", ".join(str(f) for f in folders.values())
    print(
        f"\n{total} runs ({jobs} at a time, {threads or 'default'} thread(s) each) in "
        f"{wall:.0f} s; tables: compare.md, compare.json; plots: condition.png, accuracy.png"
        f"{landscape} in {where}"
        + (f"; paired study table: {out / 'study.md'}, {out / 'study.png'}" if len(done) > 1 else "")
    )
    return 0


def _compare_gan(args: argparse.Namespace, base: Any) -> int:
    """``compare --tasks gan``: the GAN grid alone (its own treatments and table)."""
    if len(args.tasks) > 1:
        raise ValueError("--tasks gan runs alone (its treatments and table differ); give --tasks gan")
    # options not given take the GAN's defaults (None: filled in for the task)
    cfg = base.replace(task="gan", **{
        k: None for k in ("arch", "epochs", "batch_size") if getattr(args, k) is None
    })  # fmt: skip
    treatments = (
        [t.strip() for t in args.treatments.split(",") if t.strip()]
        if args.treatments is not None else list(default_treatments("gan"))
    )  # fmt: skip
    for t in treatments:
        parse_gan_treatment(t)  # fail before starting any run
    never = set.intersection(*(set(cfg.replace(treatment=t).ineffective_settings()) for t in treatments))
    if never:
        raise ValueError("options that would change nothing in any of these treatments: " + "; ".join(sorted(never)))
    out = Path(args.out) if args.out else Path("runs") / "compare"
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    runs = len(treatments) * args.seeds
    on_cpu = resolve_device(cfg.device).type == "cpu"
    jobs = args.jobs or (min(_cpu_count(), runs) if on_cpu else 1)
    threads = args.threads or (max(1, _cpu_count() // jobs) if on_cpu else None)
    t0 = time.perf_counter()
    rows, results = compare(
        cfg, treatments, seeds=args.seeds, out=out, progress=not args.quiet and jobs == 1,
        log=log, jobs=jobs, threads=threads,
    )  # fmt: skip
    print(format_gan_table(rows))
    for r in rows:
        if r["reasons"]:
            print(f"failed runs of {r['treatment']} ({len(r['reasons'])}): {'; '.join(r['reasons'])}")
    print(
        f"\n{len(results)} runs ({jobs} at a time, {threads or 'default'} thread(s) each) in "
        f"{time.perf_counter() - t0:.0f} s; table: {out / 'compare.md'}, {out / 'compare.json'}; "
        f"traversal grids: {out / 'traversals'}/<treatment>.png"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    baseline = None
    if args.baseline is not None:
        try:
            baseline = json.loads(Path(args.baseline).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"--baseline: no file at {args.baseline!r}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--baseline: {args.baseline!r} is not JSON ({exc})") from None
    res = evaluate_checkpoint(
        args.checkpoint, corruptions=args.corruptions, severities=args.severities,
        baseline=baseline, seed=args.seed, device=args.device, data_dir=args.data_dir,
        batch_size=args.batch_size,
    )  # fmt: skip
    ckpt = Path(res["checkpoint"])
    out = Path(args.out) if args.out else ckpt.parent / "eval.json"
    print(f"checkpoint     : {ckpt} ({res['label']}, seed {res['config']['seed']}, "
          f"epoch {res['epoch']})")
    methods = sorted({f"{m}/{b}" for m, b, _ in res["meta_layers"].values()})
    print(f"meta-layers    : {', '.join(methods) or '—'}")
    loss = res["clean_loss"]
    print(f"clean accuracy : {100 * res['clean_accuracy']:.2f}% on {res['num_samples']} test "
          f"images (loss {'inf' if loss is None else format(loss, '.4f')})")
    if res["corruptions"] is not None:
        print(format_corruption_report(res["corruptions"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(res), indent=1) + "\n", encoding="utf-8")
    print(f"result         : {out}")
    return 0


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)

