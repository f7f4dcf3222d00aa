"""The ``orthocond`` argument parser. The options of ``train`` and ``compare`` are generated
from :class:`~orthocond.train.TrainConfig`'s fields (name, type, choices, default, help):
a setting and its default are written once, in :mod:`orthocond.train.config`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable

from orthocond.analysis import CORRUPTIONS
from orthocond.train import (
    COMPARE_DEFAULTS,
    COMPARE_PRESETS,
    COMPARE_TASKS,
    DEFAULT_TREATMENTS,
    TASK_COMPARE_DEFAULTS,
    TREATMENT_PARTS,
    TrainConfig,
)
from orthocond.train.config import cli_fields, task_default_text
from orthocond.train.gan import GAN_DEFAULT_TREATMENTS, GAN_STUDY_TREATMENTS, GAN_TREATMENT_PARTS

from . import argtypes

__all__ = ["add_config_options", "build_parser", "config_from_args"]

#: How a field's ``argtype`` metadata parses its command-line text.
ARGTYPES: dict[str, Callable[[str], Any]] = {
    "positive_int": argtypes.positive_int,
    "non_negative_int": argtypes.non_negative_int,
    "float": argtypes.finite_float,
    "milestones": argtypes.milestones,
    "switch_epoch": argtypes.switch_epoch,
}


def _fields(compare: bool) -> list[dataclasses.Field]:
    return [f for f in cli_fields() if f.metadata["compare"] or not compare]


def _help(f: dataclasses.Field, default: Any) -> str:
    text = f.metadata["help"]
    if default is None:
        task = task_default_text(f.name)
        return f"{text} (default {task})" if task else text
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return f"{text} (default {default})"


def add_config_options(parser: argparse.ArgumentParser, *, compare: bool) -> dict[str, Any]:
    """Add one option per :class:`TrainConfig` field (``compare``: not the treatment fields,
    and :data:`~orthocond.train.COMPARE_DEFAULTS` as defaults); returns the option groups by
    title, for the command's own options."""
    groups: dict[str, Any] = {}
    for f in _fields(compare):
        meta = f.metadata
        group = groups.get(meta["group"])
        if group is None:
            group = groups[meta["group"]] = parser.add_argument_group(meta["group"])
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):  # a switch: --download, or --no-augment for a True default
            action = "store_false" if f.default else "store_true"
            group.add_argument(flag, dest=f.name, action=action, help=meta["help"])
            continue
        default = COMPARE_DEFAULTS.get(f.name, f.default) if compare else f.default
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": _help(f, default)}
        for key in ("choices", "metavar", "nargs", "const"):
            if meta[key] is not None:
                kwargs[key] = meta[key]
        if meta["argtype"] is not None:
            kwargs["type"] = ARGTYPES[meta["argtype"]]
        group.add_argument(flag, **kwargs)
    return groups


def config_from_args(args: argparse.Namespace, *, compare: bool) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``train`` / ``compare`` options."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in _fields(compare)})


def _run_options(group: Any, *, compare: bool) -> None:
    group.add_argument("--out", default=None,
                       help="output folder (default runs/compare, or runs/<task>-<arch>-<dataset>-"
                            "<treatment>-s<seed> for train)")
    group.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    group.add_argument("--threads", type=argtypes.positive_int, default=None,
                       help="torch intra-op threads per run (default: "
                            + ("CPU cores / --jobs on the CPU" if compare else "torch's default") + ")")
    if compare:
        group.add_argument("--jobs", type=argtypes.positive_int, default=None,
                           help="runs trained at the same time, one process each (default: the "
                                "number of CPU cores on the CPU, 1 on a GPU)")


def build_parser(compare_preset: str | None = None) -> argparse.ArgumentParser:
    """The ``orthocond`` argument parser (subcommands train, compare, bench, eval);
    ``compare_preset`` (a key of :data:`~orthocond.train.COMPARE_PRESETS`) sets compare's
    defaults."""
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
    groups = add_config_options(tr, compare=False)
    _run_options(groups["run"], compare=False)
    groups["treatment"].add_argument(
        "--resume", action="store_true",
        help="continue from --out/checkpoint.pt (same settings; --epochs may grow)")
    groups["treatment"].add_argument(
        "--overwrite", action="store_true",
        help="start afresh in an --out that already holds a checkpoint (default: refuse, so "
             "that no run is lost by accident)")
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
        f"Without arguments: embedded MNIST, both applications ({','.join(COMPARE_TASKS)}: "
        f"DBN ResNet-18 stem, GCP ResNet-18 head), {TrainConfig().epochs} epochs, one seed, "
        f"treatments {','.join(DEFAULT_TREATMENTS)}, one single-threaded run per CPU core "
        "at a time.",
    )  # fmt: skip
    groups = add_config_options(cp, compare=True)
    _run_options(groups["run"], compare=True)
    cp.add_argument("--treatments", default=None,
                    help="comma-separated treatments; each joins parts of "
                         f"{{{','.join(TREATMENT_PARTS)}}} with '+' "
                         f"(default {','.join(DEFAULT_TREATMENTS)}); --tasks gan: parts of "
                         f"{{{','.join(GAN_TREATMENT_PARTS)}}} (default "
                         f"{','.join(GAN_DEFAULT_TREATMENTS)})")
    cp.add_argument("--tasks", type=argtypes.tasks, default=",".join(COMPARE_TASKS),
                    help="comma-separated applications: dbn (decorrelated-BN stem), gcp (GCP "
                         "head), gan (the digit GAN of the TPAMI latent-disentanglement study; "
                         "alone: its own treatments and FID/PPL/VP table); each runs every "
                         "treatment it supports into --out/<task> when "
                         f"there are several (default {','.join(COMPARE_TASKS)}; options not "
                         "given take per-task defaults: "
                         + "; ".join(f"{t}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                                     for t, d in TASK_COMPARE_DEFAULTS.items()) + ")")
    cp.add_argument("--seeds", type=argtypes.positive_int, default=1,
                    help="seeds per treatment (--seed, --seed+1, ...; default 1)")
    cp.add_argument("--preset", choices=tuple(COMPARE_PRESETS), default=None,
                    help="failures: count the runs each eigen-gradient loses to NaN/Inf or "
                         "divergence -- the unguarded textbook gradient (bwd-svd-unguarded) "
                         "against exact/svd/taylor/pade and under OLR, NOG+OLR and a hard "
                         "orthogonal stem; eps 1e-5, lr 0.1, 1 epoch of 2048 images in "
                         "batches of 32, no augmentation, 8 seeds, --out runs/failures (dbn). "
                         "study: both applications x 5 seeds x the treatments of "
                         "STUDY_TREATMENTS (paper NOG/OLR, the update-target variants, muon, "
                         "hard, soc, cayley), 2 epochs of 1152 images in batches of 32 (lr x0.1 "
                         "after 1.5 epochs), 500 test images, with a "
                         "paired per-seed table against vanilla (study.md, study.png), "
                         "--out runs/study. "
                         "gan-study: the GAN latent-disentanglement study (--tasks gan, DCGAN, "
                         f"treatments {','.join(GAN_STUDY_TREATMENTS)}, 8 epochs, 3 seeds, "
                         "--out runs/gan-study; ~30 min with --jobs 1). "
                         "Options given explicitly override the preset")
    if compare_preset is not None:
        cp.set_defaults(**COMPARE_PRESETS[compare_preset])

    sub.add_parser(
        "bench", help="benchmark the matrix functions and NOG (see orthocond bench --help)",
        add_help=False,
    )

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
    ev.add_argument("--corruptions", type=argtypes.corruptions, default=None,
                    help=f"'all' or a comma-separated subset of {','.join(CORRUPTIONS)} "
                         "(default: clean accuracy only)")
    ev.add_argument("--severities", type=argtypes.severities, default=(1, 2, 3, 4, 5),
                    help="comma-separated severities in 1..5 (default 1,2,3,4,5)")
    ev.add_argument("--baseline", default=None, metavar="RESULT.json",
                    help="an earlier `orthocond eval` result with the same corruptions and "
                         "severities: adds CE, mCE and relative CE/mCE")
    ev.add_argument("--seed", type=argtypes.non_negative_int, default=0,
                    help="seed of the corruption noise (default 0)")
    ev.add_argument("--out", default=None, metavar="RESULT.json",
                    help="where to write the JSON result (default eval.json next to the "
                         "checkpoint)")
    ev.add_argument("--device", default=None,
                    help="overrides the checkpoint's device (auto, cpu, cuda:N)")
    ev.add_argument("--data-dir", default=None, help="overrides the checkpoint's data folder")
    ev.add_argument("--batch-size", type=argtypes.positive_int, default=None,
                    help="evaluation batch size (default max(training batch, 256))")
    return parser
