"""Command line: ``orthocond train``, ``compare``, ``bench`` and ``eval``.

``orthocond compare`` with no arguments is the main job: it trains a small
decorrelated-BN ResNet-18 (width 16, 4 epochs) on the embedded MNIST digits once per
treatment (vanilla, NOG, NOG rescaled to the gradient norm, OLR, NOG+OLR,
rescaled NOG+OLR, hard orthogonal Pre-SVD layer, SOC orthogonal stem), one
single-threaded process per CPU core, prints a markdown table (accuracy,
covariance condition number final and max, orthogonality error, Pre-SVD weight
norm, failed runs) and writes it with plots to ``runs/compare`` (about 5-6 minutes
on 2 CPU cores). ``orthocond eval --checkpoint RUN`` measures a trained run's clean and
common-corruption accuracy. Research options of train/compare (off by default): the
CVPR 2020 lr schedules (``--schedule normal|fast|adjusted``), the hybrid NS→SVD switch
(``--hybrid-switch-epoch``) and the loss-landscape probe (``--landscape-every``).
``orthocond compare --preset failures`` counts the runs each eigen-gradient loses to NaN
(the unguarded textbook gradient against orthocond's, 8 seeds, about 6 minutes). See
``orthocond <command> --help``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._argtypes import finite_float, non_negative_int, positive_int

__all__ = ["main", "build_parser", "parse_args"]

# The quick defaults of `orthocond compare` (embedded MNIST, 2 CPU cores: ~6-7 minutes).
COMPARE_DEFAULTS = {"epochs": 4, "width": 16, "monitor_every": 2}

# `orthocond compare --preset NAME`: defaults of the compare options (explicit options win).
# failures: the paper DBN eps 1e-5 and short noisy runs (64 steps of batch 32), 8 seeds per
# treatment, where the unguarded textbook eigen-gradient NaNs (72 runs, ~6 minutes on 2 cores).
COMPARE_PRESETS: dict[str, dict[str, Any]] = {
    "failures": {
        "eps": 1e-5, "lr": 0.1, "batch_size": 32, "limit_train": 2048, "epochs": 1,
        "no_augment": True, "seeds": 8, "monitor_every": 4, "treatments": None,
        "out": str(Path("runs") / "failures"),
    },
}  # fmt: skip


def _milestones(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated epochs such as 100,200,300, got {text!r}"
        ) from None
    return vals


def _switch_epoch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a 0-based epoch >= 0 or 'auto', got {text!r}")
    return v


def _corruptions(text: str) -> tuple[str, ...]:
    from .robustness import CORRUPTIONS

    if text.strip() == "all":
        return CORRUPTIONS
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in CORRUPTIONS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected 'all' or distinct names of {','.join(CORRUPTIONS)} separated by commas, "
            f"got {text!r}"
        )
    return names


def _severities(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        vals = ()
    if not vals or any(not 1 <= v <= 5 for v in vals) or len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(
            f"expected distinct severities in 1..5 separated by commas, e.g. 1,3,5, got {text!r}"
        )
    return vals


def _add_common(p: argparse.ArgumentParser, *, compare: bool) -> None:
    from .data import DATASETS
    from .linalg import ALL_BACKWARDS
    from .training import SCHEDULES, TASKS

    g = p.add_argument_group("model and data")
    g.add_argument("--task", choices=TASKS, default="dbn",
                   help="dbn: ZCA-whitening (decorrelated BN) after the stem conv (ECCV22); "
                        "gcp: global covariance pooling head (iSQRT-COV). Default dbn")
    g.add_argument("--arch", default="resnet18",
                   help="resnet18/34/50 (dbn), resnet18/50/101 (gcp). Default resnet18")
    g.add_argument("--dataset", choices=DATASETS, default="mnist",
                   help="mnist = the embedded 5,000 real MNIST digits (4,000 train / 1,000 test, "
                        "no download); cifar10/cifar100/imagefolder need --data-dir. Default mnist")
    g.add_argument("--data-dir", default=None, help="folder with the dataset files")
    g.add_argument("--download", action="store_true",
                   help="let torchvision download CIFAR into --data-dir (never done implicitly)")
    g.add_argument("--limit-train", type=positive_int, default=None,
                   help="train on a stratified subset of this many images")
    g.add_argument("--limit-test", type=positive_int, default=None,
                   help="evaluate on a stratified subset of this many images")
    g.add_argument("--width", type=positive_int, default=None,
                   help="base width of the ResNet (default 16 on mnist, 64 otherwise)")
    g.add_argument("--method", choices=("eig", "ns", "mpa"), default=None,
                   help="matrix function of the meta-layer (default eig for dbn, ns for gcp)")
    g.add_argument("--backward", choices=ALL_BACKWARDS, default="exact",
                   help="gradient of method=eig (default exact; svd-unguarded is the textbook "
                        "formula without a guard, which NaNs at tied eigenvalues: for failure "
                        "studies)")
    g.add_argument("--iters", type=positive_int, default=None,
                   help="Newton-Schulz iterations for method=ns (default 5)")
    g.add_argument("--eps", type=finite_float, default=None,
                   help="eps added to the covariance before the meta-layer (default 1e-2 for the "
                        "dbn ZCA whitening, 0 for the gcp head as in iSQRT-COV)")
    g.add_argument("--groups", type=positive_int, default=1, help="ZCA channel groups (default 1)")
    g.add_argument("--reduced-channels", type=positive_int, default=None,
                   help="GCP covariance size d (default min(256, 8*width))")
    g.add_argument("--no-augment", action="store_true", help="no random crop / flip")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_int,
                   default=None if compare else 4,
                   help=f"epochs (default {COMPARE_DEFAULTS['epochs'] if compare else 4})")
    o.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    o.add_argument("--lr", type=finite_float, default=None, help="SGD learning rate (default 0.1)")
    o.add_argument("--momentum", type=finite_float, default=0.9, help="default 0.9")
    o.add_argument("--weight-decay", type=finite_float, default=None,
                   help="default 5e-4 (dbn, ECCV22) / 1e-4 (gcp, iSQRT-COV)")
    o.add_argument("--schedule", choices=SCHEDULES, default="multistep",
                   help="lr schedule, stepped every iteration (default multistep x--gamma); "
                        "normal/fast/adjusted: the CVPR 2020 GCP schedules (0.1^floor(e/30) of "
                        "100 epochs, (1-(e-1)/52)^11 of 30, (1-(e-1)/49)^2 of 50) stretched "
                        "onto --epochs; step: x--gamma at whole-epoch --milestones (default "
                        "epochs/2, 3*epochs/4)")
    o.add_argument("--milestones", type=_milestones, default=None,
                   help="multistep/step milestones in epochs, e.g. 100,200,300 (default: the "
                        "papers' fractions of --epochs: dbn 100/200/300 of 350, gcp 30/45/60 "
                        "of 65)")
    o.add_argument("--gamma", type=finite_float, default=0.1,
                   help="multistep/step factor (default 0.1)")
    o.add_argument("--hybrid-switch-epoch", type=_switch_epoch, default=None, metavar="E|auto",
                   help="hybrid NS->SVD (ICCV 2021): from the 0-based epoch E on, the "
                        "meta-layers compute method=eig with --hybrid-backward; auto = the "
                        "epoch of the schedule's last lr decay (multistep, normal, step). "
                        "Default off")
    o.add_argument("--hybrid-backward", choices=("pade", "exact", "taylor", "svd"),
                   default="pade", help="eigen-gradient after the hybrid switch (default pade)")
    o.add_argument("--nog-rtol", type=finite_float, default=None,
                   help="NOG singular-value cut-off (relative to the largest; default none)")
    o.add_argument("--penalty-coef", type=finite_float, default=None,
                   help="lambda of the so/dso/mc/srip penalties (default 1e-2; srip: "
                        "its epoch schedule)")

    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:N")
    r.add_argument("--seed", type=non_negative_int, default=0, help="default 0")
    r.add_argument("--monitor-every", type=positive_int, default=None if compare else 10,
                   help="record the condition number every N steps (default "
                        + (f"{COMPARE_DEFAULTS['monitor_every']})" if compare else "10)"))
    r.add_argument("--landscape-every", type=non_negative_int, default=0, metavar="K",
                   help="measure the loss landscape / gradient predictiveness at the stem "
                        "output (CVPR 2020) after the backward of every K-th step; writes "
                        "landscape.json and landscape.png"
                        + (" (per run; compare overlays them in landscape.png)" if compare else "")
                        + ". 0 = off (default)")
    r.add_argument("--landscape-steps", type=positive_int, default=50, metavar="N",
                   help="step sizes of each landscape measurement, evenly spaced in "
                        "[0.1, 75] (default 50, as in the paper)")
    r.add_argument("--out", default=None,
                   help="output folder (default runs/compare, or runs/<task>-<arch>-<dataset>-<treatment>-s<seed> for train)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    r.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    r.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    r.add_argument("--workers", type=non_negative_int, default=4,
                   help="DataLoader workers (imagefolder only; default 4)")
    r.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads per run (default: "
                        + ("CPU cores / --jobs on the CPU" if compare else "torch's default") + ")")
    if compare:
        r.add_argument("--jobs", type=positive_int, default=None,
                       help="runs trained at the same time, one process each (default: the "
                            "number of CPU cores on the CPU, 1 on a GPU)")


def build_parser(compare_preset: str | None = None) -> argparse.ArgumentParser:
    """The ``orthocond`` argument parser (subcommands train, compare, bench, eval);
    ``compare_preset`` (a key of :data:`COMPARE_PRESETS`) sets compare's defaults."""
    from .training import DEFAULT_TREATMENTS, ORTHO_KINDS, TREATMENT_PARTS

    parser = argparse.ArgumentParser(
        prog="orthocond",
        description="Covariance conditioning for networks with an SVD meta-layer "
        "(NOG, OLR, orthogonal Pre-SVD layers).",
        epilog="Main job: `orthocond compare` (no arguments) -- a CPU comparison of the "
        "treatments on the embedded MNIST digits in a few minutes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,bench,eval}")
    sub.required = True

    tr = sub.add_parser(
        "train", help="train one model, with progress bar, metrics, checkpoints and plots",
        description="Train one model. Writes metrics.jsonl, steps.csv, summary.json, "
        "checkpoint.pt (every epoch, atomic), TensorBoard events (tb/, if installed), "
        "condition.png / accuracy.png and, with --landscape-every, landscape.json / "
        "landscape.png into --out. metrics.jsonl records the meta-layer method per epoch.",
    )  # fmt: skip
    _add_common(tr, compare=False)
    t = tr.add_argument_group("treatment")
    t.add_argument("--nog", nargs="?", const="svd", choices=("svd", "ns"), default=None,
                   help="Nearest Orthogonal Gradient on the Pre-SVD layer (svd by default; "
                        "ns = Polar-Express matmul iteration)")
    t.add_argument("--nog-scale", choices=("none", "grad"), default="none",
                   help="none = the paper's U V^T; grad = rescaled to the gradient norm")
    t.add_argument("--olr", nargs="?", const="paper", choices=("paper", "exact"), default=None,
                   help="Optimal Learning Rate for the Pre-SVD layer (paper closed form by "
                        "default; exact = minimiser of the quartic)")
    t.add_argument("--ortho", choices=ORTHO_KINDS, default="none",
                   help="orthogonality of the Pre-SVD layer: hard (geotorch), soc (SOC stem), "
                        "so/dso/mc/srip (penalty), oni, own, cayley (Cayley SGD). Default none")
    t.add_argument("--treatment", default=None,
                   help="a compare-style name such as nog-grad+olr (overrides --nog/--olr/--ortho)")
    t.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoint.pt (same settings; --epochs may grow)")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that already holds a checkpoint (default: "
                        "refuse, so that no run is lost by accident)")
    d = tr.add_argument_group("distributed (torchrun --nproc_per_node=N -m orthocond train ...)")
    d.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun: synchronise the decorrelated-BN statistics over all "
                        "processes (default on under torchrun; ignored in a single process). "
                        "Each process trains on its slice of every global --batch-size batch "
                        "(gloo on the CPU, nccl with one GPU per LOCAL_RANK); only rank 0 "
                        "writes --out and prints")

    cp = sub.add_parser(
        "compare", help="run a grid of treatments x seeds; table + plots (the main job)",
        description="Train once per treatment and seed; print a markdown table (test "
        "accuracy mean ± std, covariance condition number final and max, orthogonality "
        "error, Pre-SVD weight norm, failed runs) and write compare.md, compare.json, "
        "condition.png (log10 condition number vs step per treatment) and accuracy.png. "
        "Without arguments: embedded MNIST, DBN ResNet-18 of width "
        f"{COMPARE_DEFAULTS['width']}, {COMPARE_DEFAULTS['epochs']} epochs, one seed, treatments "
        f"{','.join(DEFAULT_TREATMENTS)}, one single-threaded run per CPU core at a time.",
    )  # fmt: skip
    _add_common(cp, compare=True)
    cp.add_argument("--treatments", default=",".join(DEFAULT_TREATMENTS),
                    help="comma-separated treatments; each joins parts of "
                         f"{{{','.join(TREATMENT_PARTS)}}} with '+' "
                         f"(default {','.join(DEFAULT_TREATMENTS)})")
    cp.add_argument("--seeds", type=positive_int, default=1,
                    help="seeds per treatment (--seed, --seed+1, ...; default 1)")
    cp.add_argument("--preset", choices=tuple(COMPARE_PRESETS), default=None,
                    help="failures: count the runs each eigen-gradient loses to NaN/Inf or "
                         "divergence -- the unguarded textbook gradient (bwd-svd-unguarded) "
                         "against exact/svd/taylor/pade and under OLR, NOG+OLR and a hard "
                         "orthogonal stem; eps 1e-5, lr 0.1, 1 epoch of 2048 images in "
                         "batches of 32, no augmentation, 8 seeds, --out runs/failures. "
                         "Options given explicitly override the preset")
    if compare_preset is not None:
        preset = dict(COMPARE_PRESETS[compare_preset])
        if preset.get("treatments") is None:
            from .training import FAILURE_TREATMENTS

            preset["treatments"] = ",".join(FAILURE_TREATMENTS)
        cp.set_defaults(**preset)

    sub.add_parser(
        "bench", help="benchmark the matrix functions and NOG (forwards to orthocond.bench)",
        add_help=False,
    )

    from .robustness import CORRUPTIONS

    ev = sub.add_parser(
        "eval", help="evaluate a checkpoint: clean and common-corruption accuracy",
        description="Load a checkpoint written by `orthocond train` and its config, rebuild "
        "the data (same test subset) and the model (with the hybrid-switch state), and "
        "evaluate the clean test accuracy; with --corruptions also the corrupted accuracy "
        "per corruption and severity (CVPR 2020, generated on the fly, deterministic given "
        "--seed) and, with --baseline, CE / mCE against an earlier result. Prints a "
        "report and writes it as JSON.",
    )  # fmt: skip
    ev.add_argument("--checkpoint", required=True, metavar="PATH",
                    help="checkpoint.pt, or the run directory holding it")
    ev.add_argument("--corruptions", type=_corruptions, default=None,
                    help=f"'all' or a comma-separated subset of {','.join(CORRUPTIONS)} "
                         "(default: clean accuracy only)")
    ev.add_argument("--severities", type=_severities, default=(1, 2, 3, 4, 5),
                    help="comma-separated severities in 1..5 (default 1,2,3,4,5)")
    ev.add_argument("--baseline", default=None, metavar="RESULT.json",
                    help="an earlier `orthocond eval` result with the same corruptions and "
                         "severities: adds CE, mCE and relative CE/mCE")
    ev.add_argument("--seed", type=non_negative_int, default=0,
                    help="seed of the corruption noise (default 0)")
    ev.add_argument("--out", default=None, metavar="RESULT.json",
                    help="where to write the JSON result (default eval.json next to the "
                         "checkpoint)")
    ev.add_argument("--device", default=None,
                    help="overrides the checkpoint's device (auto, cpu, cuda:N)")
    ev.add_argument("--data-dir", default=None, help="overrides the checkpoint's data folder")
    ev.add_argument("--batch-size", type=positive_int, default=None,
                    help="evaluation batch size (default max(training batch, 256))")
    return parser


def _config(args: argparse.Namespace, *, compare: bool) -> Any:
    from .training import TrainConfig

    epochs = args.epochs
    width = args.width
    if compare:
        if epochs is None:
            epochs = COMPARE_DEFAULTS["epochs"]
        if width is None and args.dataset == "mnist":
            width = COMPARE_DEFAULTS["width"]
    monitor_every = args.monitor_every or COMPARE_DEFAULTS["monitor_every"]
    kw: dict[str, Any] = dict(
        task=args.task, arch=args.arch, dataset=args.dataset, data_dir=args.data_dir,
        download=args.download, limit_train=args.limit_train, limit_test=args.limit_test,
        epochs=epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, milestones=args.milestones,
        gamma=args.gamma, nog_rtol=args.nog_rtol, penalty_coef=args.penalty_coef,
        hybrid_switch_epoch=args.hybrid_switch_epoch, hybrid_backward=args.hybrid_backward,
        landscape_every=args.landscape_every, landscape_steps=args.landscape_steps,
        method=args.method, backward=args.backward, iters=args.iters, eps=args.eps,
        groups=args.groups, width=width, reduced_channels=args.reduced_channels,
        augment=not args.no_augment, device=args.device, seed=args.seed,
        monitor_every=monitor_every, workers=args.workers,
        tensorboard=not args.no_tensorboard, plots=not args.no_plots,
    )  # fmt: skip
    if not compare:
        kw.update(nog=args.nog, nog_scale=args.nog_scale, olr=args.olr, ortho=args.ortho,
                  treatment=args.treatment)
    return TrainConfig(**kw)


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
    print("\n".join(lines))


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import CHECKPOINT_NAME, clear_run_outputs, distributed_env, train

    env = distributed_env()  # torchrun: rank 0 prints (and clears), the others stay silent
    cfg = _config(args, compare=False)
    ineffective = cfg.ineffective_settings()
    if ineffective:
        raise ValueError("options that would change nothing in this run: " + "; ".join(ineffective))
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path("runs") / _slug(
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from .training import compare, distributed_env, format_table

    if distributed_env() is not None:
        raise ValueError(
            "compare does not support torchrun (WORLD_SIZE > 1); run `orthocond compare` "
            "without torchrun (--jobs N trains runs in parallel)"
        )
    cfg = _config(args, compare=True)
    treatments = [t.strip() for t in args.treatments.split(",") if t.strip()]
    out = Path(args.out) if args.out else Path("runs") / "compare"
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    from .training import parse_treatment, resolve_device

    for t in treatments:
        parse_treatment(t)  # fail before starting any run
    grid = [cfg.replace(treatment=t) for t in treatments]
    never = set.intersection(*(set(c.ineffective_settings()) for c in grid))
    if never:
        raise ValueError(
            "options that would change nothing in any of these treatments: " + "; ".join(sorted(never))
        )
    runs = len(treatments) * args.seeds
    on_cpu = resolve_device(cfg.device).type == "cpu"
    jobs = args.jobs or (min(_cpu_count(), runs) if on_cpu else 1)
    threads = args.threads or (max(1, _cpu_count() // jobs) if on_cpu else None)
    t0 = time.perf_counter()
    rows, results = compare(
        cfg, treatments, seeds=args.seeds, out=out, progress=not args.quiet and jobs == 1,
        log=log, jobs=jobs, threads=threads,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    print(format_table(rows))
    landscape = f", {out / 'landscape.png'}" if cfg.landscape_every and cfg.plots else ""
    print(
        f"\n{len(results)} runs ({jobs} at a time, {threads or 'default'} thread(s) each) in "
        f"{wall:.0f} s; table: {out / 'compare.md'}, "
        f"{out / 'compare.json'}; plots: {out / 'condition.png'}, {out / 'accuracy.png'}"
        f"{landscape}"
    )
    for r in rows:
        if r["reasons"]:
            print(f"failed runs of {r['treatment']} ({len(r['reasons'])}): {'; '.join(r['reasons'])}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .diagnostics import jsonable
    from .robustness import format_corruption_report
    from .training import evaluate_checkpoint

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


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name.replace("+", "_"))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``orthocond`` arguments (not ``bench``); ``compare --preset P`` takes the
    preset's values as defaults, so options given explicitly still win."""
    args = build_parser().parse_args(argv)
    if args.command == "compare" and args.preset is not None:
        args = build_parser(compare_preset=args.preset).parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``orthocond`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from . import bench

        return int(bench.main(argv[1:]) or 0)
    args = parse_args(argv)
    try:
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "eval":
            return _cmd_eval(args)
        return _cmd_compare(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"orthocond {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
