"""``orthocond bench``'s options and entry point (the suites live in :mod:`orthocond.bench`)."""

from __future__ import annotations

import argparse
import sys

from orthocond._checks import resolve_device
from orthocond.bench import DTYPES, STEP_MODELS, SUITES, check_shape, parse_size, run_bench

from .argtypes import non_negative_int, positive_float, positive_int

__all__ = ["build_parser", "main"]


def _size_arg(text: str) -> tuple[str | None, tuple[int, ...]]:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orthocond bench",
        description="Time the meta-layer (gcp, zca) and NOG methods and a NOG+OLR training step "
        "against plain-PyTorch baselines, with float64-reference accuracy and peak memory.",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--suite", default="all", choices=("all", *SUITES))
    parser.add_argument(
        "--size",
        action="append",
        type=_size_arg,
        default=[],
        metavar="[SUITE:]AxB..",
        help="replace a suite's default sizes (repeatable): gcp:BxCxHxW, zca:NxCxHxW, nog:MxN, "
        "polar:MxN, step:BxR; the SUITE: prefix may be omitted with a single --suite",
    )
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (CUDA)")
    parser.add_argument("--repeat", type=positive_int, default=None, help="timed runs (20 CUDA, 5 CPU)")
    parser.add_argument("--warmup", type=non_negative_int, default=None, help="warm-up runs (3 CUDA, 1 CPU)")
    parser.add_argument(
        "--max-time",
        type=positive_float,
        default=2.0,
        help="seconds of timed runs per measurement; fewer repeats for slow methods (default 2)",
    )
    parser.add_argument("--step-model", default="auto", choices=STEP_MODELS)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write JSON (- for stdout)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="progress lines on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``orthocond bench`` (``python -m orthocond bench``); returns 0.

    Bad arguments exit through ``argparse`` (``SystemExit(2)`` with a message on stderr).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    sizes: dict[str, list[tuple[int, ...]]] = {}
    for suite, dims in args.size:
        if suite is None:
            if args.suite == "all":
                parser.error(f"--size {'x'.join(map(str, dims))} needs a SUITE: prefix with --suite all")
            suite = args.suite
            try:
                check_shape(suite, dims)
            except ValueError as err:
                parser.error(f"--size: {err}")
        if suite not in suites:
            parser.error(f"--size {suite}:... given but --suite {args.suite} does not run {suite!r}")
        sizes.setdefault(suite, []).append(dims)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(f"--device: {err}")
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    report = run_bench(
        suites,
        device=device,
        dtype=args.dtype,
        sizes=sizes,
        tf32=args.tf32,
        repeat=args.repeat,
        warmup=args.warmup,
        max_time_s=args.max_time,
        quick=args.quick,
        step_model=args.step_model,
        log=log,
    )
    if args.json == "-":
        print(report.to_json())
    else:
        print(report.to_markdown())
        if args.json is not None:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(report.to_json() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
