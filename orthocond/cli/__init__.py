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
import sys
from collections.abc import Sequence

from .bench import main as bench_main
from .commands import cmd_compare, cmd_eval, cmd_train
from .parser import build_parser

__all__ = ["build_parser", "main", "parse_args"]


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
        return int(bench_main(argv[1:]) or 0)
    args = parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "eval":
            return cmd_eval(args)
        return cmd_compare(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"orthocond {args.command}: error: {exc}", file=sys.stderr)
        return 2
